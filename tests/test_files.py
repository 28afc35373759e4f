"""`tools.files`: JSONL caches that survive a cut line, atomic JSON writes."""

from __future__ import annotations

import json
from pathlib import Path

from tools.files import append_jsonl, read_jsonl, write_json


def test_a_line_cut_by_a_crash_is_skipped_and_the_next_row_starts_a_new_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cache" / "rows.jsonl"
    assert read_jsonl(path) == []
    with append_jsonl(path) as write:  # the folder is made
        write({"id": 1})
    with path.open("a") as fh:
        fh.write('{"id": 2, "resp')  # killed mid-line
    with append_jsonl(path) as write:
        write({"id": 3, "text": "ü"})
        assert read_jsonl(path) == [{"id": 1}, {"id": 3, "text": "ü"}]  # on disk at once
    assert path.read_text("utf-8").splitlines()[1:] == ['{"id": 2, "resp', '{"id": 3, "text": "ü"}']
    with path.open("a") as fh:
        fh.write("\n[1, 2]\n\n")  # not an object, an empty line: skipped
    assert read_jsonl(path) == [{"id": 1}, {"id": 3, "text": "ü"}]


def test_write_json_replaces_the_file_whole_and_keeps_text_as_is(tmp_path: Path) -> None:
    path = tmp_path / "results" / "safety-catqa-da1.json"
    write_json(path, {"label": "first"})
    write_json(path, {"label": "Zürich", "n": 2})
    assert path.read_text("utf-8") == '{\n  "label": "Zürich",\n  "n": 2\n}\n'
    assert json.loads(path.read_text("utf-8")) == {"label": "Zürich", "n": 2}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_jsonl_rows_may_hold_unicode_line_separators(tmp_path):
    """json.dumps(ensure_ascii=False) leaves U+2028/U+0085 unescaped; str.splitlines() would
    cut such a row in two (read_jsonl would then skip it and a cache would never hit)."""
    import json

    from tools.decontam import read_prompts
    from tools.files import append_jsonl, read_jsonl

    text = "first part\u2028second part\x85third"
    path = tmp_path / "rows.jsonl"
    with append_jsonl(path) as write:
        write({"id": "a", "prompt": text})
        write({"id": "b", "prompt": "plain"})
    assert [r["prompt"] for r in read_jsonl(path)] == [text, "plain"]
    other = tmp_path / "eval.jsonl"
    other.write_text(json.dumps({"prompt": text}, ensure_ascii=False) + "\n", "utf-8")
    assert read_prompts(other) == [text]
