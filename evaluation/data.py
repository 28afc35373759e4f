"""Loaders for evaluation data: CatQA, BeaverTails-Evaluation, MMLU, and plain prompt lists.

Every loader takes a local path or a Hugging Face dataset id (``hf:<id>[:<split>]``, loaded with
`datasets`), and returns plain records. The formats understood are those of the public releases:

- CatQA: ``{category: {subcategory: [question, ...]}}`` (subcategory keys may end with ":").
- BeaverTails-Evaluation: CSV with columns ``prompt, category[, category_id]``.
- MMLU (qlora formatting): JSONL ``{"subject", "input", "output"}``; ``input`` ends with
  ``Answer:`` and ``output`` is the gold letter.
- Prompt lists: a run folder or its ``run.sqlite``, an export folder, a CatQA file,
  ``.jsonl``/``.json``
  (field ``prompt``, ``instruction`` or ``question``), ``.csv`` (column ``prompt``), ``.parquet``,
  ``.txt`` (one per line), or a saved HF dataset folder.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PROMPT_FIELDS = ("prompt", "instruction", "question", "text")


@dataclass(frozen=True)
class Question:
    """One harmful (or benign) evaluation prompt with its category."""

    id: str
    prompt: str
    category: str
    subcategory: str = ""


@dataclass(frozen=True)
class MultipleChoice:
    """One MMLU question: the formatted prompt ending with ``Answer:`` and the gold letter."""

    id: str
    subject: str
    prompt: str
    answer: str


def _hf_rows(spec: str) -> list[dict[str, Any]]:
    from datasets import load_dataset

    _, _, rest = spec.partition("hf:")
    name, _, split = rest.partition(":")
    return [dict(r) for r in load_dataset(name, split=split or "train")]


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"evaluation data {p} does not exist")
    return p


def load_catqa(source: str | Path) -> list[Question]:
    """CatQA (550 questions, 11 categories x 5 subcategories x 10)."""
    if str(source).startswith("hf:"):
        rows = _hf_rows(str(source))
        return [Question(f"catqa-{i}", r["Question"] if "Question" in r else r["prompt"],
                         r.get("Category", r.get("category", "")),
                         r.get("Subcategory", r.get("subcategory", "")))
                for i, r in enumerate(rows)]
    data = json.loads(_existing(source).read_text("utf-8"))
    out = []
    for category, subs in data.items():
        for sub, questions in subs.items():
            for question in questions:
                out.append(Question(f"catqa-{len(out)}", question.strip(), category,
                                    sub.rstrip(":").strip()))
    return out


def load_beavertails(source: str | Path) -> list[Question]:
    """BeaverTails-Evaluation (700 prompts, 14 categories)."""
    if str(source).startswith("hf:"):
        rows = _hf_rows(str(source))
    else:
        with _existing(source).open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    return [Question(f"beavertails-{i}", r["prompt"].strip(), r.get("category", ""))
            for i, r in enumerate(rows)]


def load_mmlu(source: str | Path) -> list[MultipleChoice]:
    """MMLU in the qlora JSONL formatting (validation: 1,531 questions, 57 subjects)."""
    if str(source).startswith("hf:"):
        rows = _hf_rows(str(source))
    else:
        rows = [json.loads(line) for line in _existing(source).read_text("utf-8").splitlines()
                if line.strip()]
    return [MultipleChoice(f"mmlu-{i}", r["subject"], r["input"], r["output"].strip())
            for i, r in enumerate(rows)]


def _prompt_of(row: dict[str, Any]) -> str:
    for name in PROMPT_FIELDS:
        if isinstance(row.get(name), str):
            return row[name]
    raise ValueError(f"no prompt field ({', '.join(PROMPT_FIELDS)}) in row {sorted(row)}")


def load_questions(source: str | Path, category_field: str = "category") -> list[Question]:
    """Generic prompt file (JSONL/JSON/CSV/TXT/Parquet or HF id) as questions."""
    if str(source).startswith("hf:"):
        rows = _hf_rows(str(source))
    else:
        path = _existing(source)
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            rows = [json.loads(x) for x in path.read_text("utf-8").splitlines() if x.strip()]
        elif suffix == ".json":
            rows = json.loads(path.read_text("utf-8"))
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        elif suffix == ".txt":
            rows = [{"prompt": x.strip()} for x in path.read_text("utf-8").splitlines()
                    if x.strip()]
        else:
            raise ValueError(f"{path}: unknown prompt file type {suffix!r}")
    return [Question(f"q-{i}", _prompt_of(r).strip(), str(r.get(category_field) or ""))
            for i, r in enumerate(rows)]


def load_prompts(source: str | Path) -> list[Question]:
    """Prompts of a data set: a run folder, ``run.sqlite``, an export, a file, or an HF id.

    For a run, the category is the weakness the prompt targeted.
    """
    path = Path(source)
    if not str(source).startswith("hf:"):
        if path.is_dir() and (path / "run.sqlite").exists():
            path = path / "run.sqlite"
        if path.is_dir() and (path / "data.jsonl").exists():
            path = path / "data.jsonl"
        if path.is_dir() and (path / "dataset_info.json").exists():
            from datasets import load_from_disk

            rows = [dict(r) for r in load_from_disk(str(path))]
            return [Question(f"q-{i}", _prompt_of(r), str(r.get("category") or ""))
                    for i, r in enumerate(rows)]
        if path.suffix == ".sqlite":
            return _run_prompts(path)
        if _is_catqa(path):
            return load_catqa(path)
    return load_questions(source)


def _is_catqa(path: Path) -> bool:
    """A CatQA-style JSON file: ``{category: {subcategory: [question, ...]}}``."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    data = json.loads(path.read_text("utf-8"))
    return isinstance(data, dict) and all(isinstance(v, dict) for v in data.values())


def _run_prompts(path: Path) -> list[Question]:
    import sqlite_utils

    db = sqlite_utils.Database(_existing(path))
    rows = db.query("select id, prompt, weakness from samples order by run_id, round, slot")
    return [Question(r["id"], r["prompt"], r["weakness"] or "") for r in rows]


def subset(items: Sequence[T], limit: int | None) -> list[T]:
    """``limit`` items spread evenly over the list (all of them when ``limit`` is None).

    Evenly spaced rather than the first ``limit``: data sets sorted by category (CatQA) or
    subject (MMLU) keep every category in proportion. Deterministic.
    """
    items = list(items)
    if limit is None or limit >= len(items):
        return items
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]
