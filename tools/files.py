"""Files the app reads and writes: user-given text and JSON with errors that name the file and
the line, atomic writes, and JSONL caches that survive a crash.

Python's own messages (``'utf-8' codec can't decode byte 0xe4 in position 18``, ``Expecting
value: line 1 column 1 (char 0)``) say neither which file nor what to do; these do::

    text = read_text(Path("prompts/generator.txt"))   # TextFileError: ...: not UTF-8 text ...
    data = read_json(Path("runs/da1/run.json"), hint="fix it or start a new run")

Writes: :func:`write_atomic` (and :func:`write_json` on top of it) write through a temporary
file renamed over the old one, so a crash mid-write leaves the old file, never half of one.
JSONL caches (one JSON object a line, appended as results arrive): :func:`append_jsonl` starts
a new line after a line a crash cut, and :func:`read_jsonl` skips such a line, so the row it
held is simply made again.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RowWriter = Callable[[Mapping[str, Any]], None]
"""Appends one row (a JSON object) to a JSONL file: what :func:`append_jsonl` gives."""


class TextFileError(ValueError):
    """A file is not UTF-8 text, or not the JSON it should be; the message names it."""


def read_text(path: Path) -> str:
    """The file's text, decoded as UTF-8; a :class:`TextFileError` naming byte and line if not."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TextFileError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); "
            "save it as UTF-8"
        ) from None


def read_json(path: Path, hint: str) -> Any:
    """The file's JSON value; a :class:`TextFileError` with line, column and ``hint`` if not."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TextFileError(
            f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); {hint}"
        ) from None


def write_atomic(path: str | Path, text: str, *, replace: bool = True) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, fsynced and then
    renamed over it: a crash or a full disk mid-write leaves the old file, never half of one.

    With ``replace=False`` an existing file is kept and :class:`FileExistsError` raised (the
    temporary file is linked, not renamed: two processes creating it cannot both win).
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:  # named after the file meant, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:  # a full disk, a read-only folder: the file meant is named
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented UTF-8 JSON (non-ASCII kept as is), atomically
    (:func:`write_atomic`); the folder is made if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file ([] if it is missing); a line that is no JSON object
    (a line cut by a crash, an empty line) is skipped."""
    if not path.exists():
        return []
    rows = []
    # "\n" only: str.splitlines() also splits at U+2028, U+0085 and the like, which a JSON
    # string may hold unescaped (json.dumps with ensure_ascii=False writes them as they are)
    for line in path.read_text("utf-8").split("\n"):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


@contextmanager
def append_jsonl(path: Path, *, flush_every: int = 1) -> Iterator[RowWriter]:
    """Append rows to a JSONL file: ``with append_jsonl(path) as write: write(row)``.

    The folder and file are made if missing. A last line a crash cut is ended first, so the
    next row is not glued to it (the cut line is then skipped by :func:`read_jsonl`). The file
    is flushed after every ``flush_every`` rows and on leaving the block.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as raw:
        if raw.tell():  # "a+" starts at the end
            raw.seek(-1, os.SEEK_END)
            if raw.read(1) != b"\n":
                raw.write(b"\n")
    every, pending = max(1, flush_every), 0
    with path.open("a", encoding="utf-8") as fh:

        def write(row: Mapping[str, Any]) -> None:
            nonlocal pending
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            pending += 1
            if pending >= every:
                fh.flush()
                pending = 0

        yield write
