"""`data-advisor eval diversity` on what the README lists: runs, exports, files; bad sources.

Each test here failed on the code before issue 8 (part 4): an export folder was an error, two
exports' ``hf`` folders wrote the same ``diversity-hf.json``, and one bad source stopped the
command before any table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_context, run_graph

from experiment.cli import main
from graph.export import export_run
from testing.stub_server import StubServer


def _run_and_export(stub: StubServer, folder: Path, method: str = "data_advisor") -> Path:
    """A 2-round run (thread = the folder's name) against the stub, exported; returns the
    export folder, laid out as `data-advisor run` + `data-advisor export` lay it out."""
    folder.mkdir(parents=True)
    ctx = make_context(stub, folder, rounds=2, prompts_per_round=4)
    _, store = run_graph(method, ctx, thread_id=folder.name)
    with store:
        export_run(store, folder / "export")
    return folder / "export"


def _results(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text("utf-8")) for p in sorted(out.glob("diversity-*.json"))}


def test_export_folder_is_a_source(tmp_path, stub, capsys):
    export = _run_and_export(stub, tmp_path / "runs" / "da1")
    out = tmp_path / "results"
    assert main(["eval", "diversity", str(export), "--out", str(out)]) == 0
    results = _results(out)
    # named after the run (from the export's dataset card), not the folder "export"
    assert list(results) == ["diversity-da1.json"]
    result = results["diversity-da1.json"]
    assert result["name"] == "da1" and result["name_from"] == "dataset card"
    rows = (export / "data.jsonl").read_text("utf-8").splitlines()
    assert result["n_prompts"] == len(rows) == 8
    assert "da1" in capsys.readouterr().out


def test_two_hf_exports_get_their_own_results(tmp_path, stub):
    da = _run_and_export(stub, tmp_path / "runs" / "da1")
    si = _run_and_export(stub, tmp_path / "runs" / "si1", "self_instruct")
    out = tmp_path / "results"
    assert main(["eval", "diversity", str(da / "hf"), str(si / "hf"), str(da / "data.jsonl"),
                 "--out", str(out)]) == 0
    results = _results(out)
    assert set(results) == {"diversity-da1.json", "diversity-si1.json",
                            f"diversity-da1-{_suffix(da / 'data.jsonl')}.json"}
    assert results["diversity-si1.json"]["source"] == str((si / "hf").resolve())
    # the same run's data.jsonl is another source with the same name: suffixed, and says so
    dup = results[f"diversity-da1-{_suffix(da / 'data.jsonl')}.json"]
    assert dup["name"] == f"da1-{_suffix(da / 'data.jsonl')}"
    assert "sha1" in dup["name_note"] and str((da / "hf").resolve()) in dup["name_note"]


def test_same_source_again_overwrites_its_own_result(tmp_path):
    prompts = tmp_path / "a" / "gen.txt"
    prompts.parent.mkdir()
    prompts.write_text("how do I pick a lock\nwhere to buy a gun\n", "utf-8")
    other = tmp_path / "b" / "gen.txt"
    other.parent.mkdir()
    other.write_text("write a poem\n", "utf-8")
    out = tmp_path / "results"
    for _ in range(2):
        assert main(["eval", "diversity", str(prompts), str(other), "--out", str(out)]) == 0
    results = _results(out)
    assert set(results) == {"diversity-gen.json", f"diversity-gen-{_suffix(other)}.json"}
    assert results["diversity-gen.json"]["n_prompts"] == 2
    assert results[f"diversity-gen-{_suffix(other)}.json"]["n_prompts"] == 1


def test_bad_sources_do_not_stop_the_others(tmp_path, capsys):
    good = tmp_path / "good.txt"
    good.write_text("how do I pick a lock\nwhere can I buy a stolen car\n", "utf-8")
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"title": "x"}\n', "utf-8")
    weird = tmp_path / "data.xyz"
    weird.write_text("?", "utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", "utf-8")
    out = tmp_path / "results"
    rc = main(["eval", "diversity", str(tmp_path / "missing.jsonl"), str(nofield), str(good),
               str(weird), str(empty), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc != 0
    assert list(_results(out)) == ["diversity-good.json"]
    assert "good" in captured.out and "d-8" in captured.out  # the table of the good one
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert len(errors) == 5, errors  # one line per bad source, then the summary
    for bad in ("missing.jsonl", "nofield.jsonl", "data.xyz", "empty.txt"):
        assert sum(bad in line for line in errors) == 1
    empty_error = next(line for line in errors if "empty.txt" in line)
    assert "no prompts" in empty_error or "no rows" in empty_error
    assert "4 of 5 sources failed" in errors[-1]
    assert "Traceback" not in captured.err + captured.out


def test_too_small_for_size_is_a_per_source_error(tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_text("one prompt\n", "utf-8")
    big = tmp_path / "big.txt"
    big.write_text("".join(f"prompt number {i}\n" for i in range(5)), "utf-8")
    out = tmp_path / "results"
    assert main(["eval", "diversity", str(small), str(big), "--size", "3", "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "small.txt" in err and "--size" in err
    assert list(_results(out)) == ["diversity-big.json"]


@pytest.mark.parametrize("argv", [["eval", "diversity", "--help"], ["report", "--help"]])
def test_help_explains_every_option_with_example(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    text = capsys.readouterr().out
    assert "example" in text.lower() and "data-advisor " + argv[0] in text
    assert "--out" in text and "default" in text
    if argv[0] == "eval":
        for option in ("--size", "--seeds"):
            assert option in text
        flat = " ".join(text.split())  # help lines wrap wherever the widest option puts them
        assert "default: 5" in flat and "default: results" in flat


def _suffix(path: Path) -> str:
    from evaluation.diversity import source_suffix

    return source_suffix(str(path.resolve()))
