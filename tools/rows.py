"""Rows of a local data file: the one reader of the data-set formats the app takes.

``.csv``, ``.jsonl``, ``.json`` (a list of objects, or CatQA's nested form
``{category: {subcategory: [question, ...]}}``), ``.parquet`` and ``.txt`` (one prompt a line,
column ``prompt``). Evaluation (``evaluation.data``, which adds ``hf:`` ids and row selection)
and decontamination (``tools.decontam``, for the generator and the training mix) read files
through :func:`read_file_rows`, so both take the same files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

PROMPT_FIELDS = ("prompt", "instruction", "question", "text")
"""Columns that hold a prompt, the first present wins."""


def catqa_rows(data: Any) -> list[dict[str, Any]] | None:
    """The rows of a CatQA-style object ``{category: {subcategory: [question, ...]}}``, or
    None when ``data`` is not one."""
    if not (isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values())):
        return None
    return [{"prompt": str(question), "category": category,
             "subcategory": sub.rstrip(":").strip()}
            for category, subs in data.items() for sub, questions in subs.items()
            for question in questions]


def read_file_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a local data file as dicts (see the module docstring); a ValueError naming
    the file when its type is unknown or it holds no list of objects."""
    suffix = path.suffix.lower()
    rows: Any
    if suffix == ".jsonl":
        # split on "\n" only: str.splitlines() also splits at U+2028 and the like, which JSON
        # strings may hold unescaped
        rows = [json.loads(x) for x in path.read_text("utf-8").split("\n") if x.strip()]
    elif suffix == ".json":
        data = json.loads(path.read_text("utf-8"))
        catqa = catqa_rows(data)
        rows = data if catqa is None else catqa
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif suffix == ".txt":
        rows = [{"prompt": x.strip()} for x in path.read_text("utf-8").splitlines() if x.strip()]
    else:
        raise ValueError(f"{path}: unknown data file type {suffix!r} (csv, jsonl, json, parquet, "
                         "txt, or hf:<id>)")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected a list of objects, one per prompt")
    return rows
