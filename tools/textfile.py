"""Reading user-given text and JSON files with errors that name the file and the line.

Python's own messages (``'utf-8' codec can't decode byte 0xe4 in position 18``, ``Expecting
value: line 1 column 1 (char 0)``) say neither which file nor what to do; these do::

    text = read_text(Path("prompts/generator.txt"))   # TextFileError: ...: not UTF-8 text ...
    data = read_json(Path("runs/da1/run.json"), hint="fix it or start a new run")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
