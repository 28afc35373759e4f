"""Loaders for evaluation data: any prompt set (with row selection), CatQA, BeaverTails, MMLU.

Every loader takes a local path or a Hugging Face dataset id (``hf:<id>[:<split>]``, loaded with
`datasets`), and returns plain records.

- Any prompt set (:func:`prompt_set`): ``.csv``, ``.jsonl``, ``.json`` (a list of objects),
  ``.parquet``, ``.txt`` (one prompt a line) or ``hf:``; the prompt and category columns are
  named or found (``prompt``/``instruction``/``question``/``text``; ``category``), and rows are
  selected by column value: ``COL=VALUE`` keeps, ``COL!=VALUE`` drops; values given for one
  column are alternatives (OR), conditions on different columns must all hold (AND).
- CatQA: ``{category: {subcategory: [question, ...]}}`` (subcategory keys may end with ":");
  :func:`catqa_set` is a shortcut over :func:`prompt_set`.
- BeaverTails-Evaluation: CSV with columns ``prompt, category[, category_id]``; likewise.
- MMLU (qlora formatting): JSONL ``{"subject", "input", "output"}``; ``input`` ends with
  ``Answer:`` and ``output`` is the gold letter.
- Prompt lists for diversity (:func:`load_prompts`): the above, a run folder or its
  ``run.sqlite``, an export folder, or a saved HF dataset folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tools.rows import PROMPT_FIELDS, catqa_rows, read_file_rows

T = TypeVar("T")


@dataclass(frozen=True)
class Question:
    """One harmful (or benign) evaluation prompt with its category."""

    id: str
    prompt: str
    category: str
    subcategory: str = ""
    taxonomy_category: str = ""
    """The category of a fixed taxonomy a prompt judge placed it in (a run with a judge, or
    a data set with a ``taxonomy_category`` column); ``""`` when none."""


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


def read_rows(source: str | Path) -> list[dict[str, Any]]:
    """The rows of a data file as dicts (:func:`tools.rows.read_file_rows`: ``.csv``,
    ``.jsonl``, ``.json`` (a list of objects, or CatQA's nested form), ``.parquet``, ``.txt``),
    or of ``hf:<id>[:<split>]``."""
    if str(source).startswith("hf:"):
        return _hf_rows(str(source))
    return read_file_rows(_existing(source))


# --------------------------------------------------------------------------------------------
# Row selection: --where COL=VALUE / COL!=VALUE
# --------------------------------------------------------------------------------------------

Condition = tuple[str, str, bool]
"""(column, value, negated) of one ``--where``."""


def parse_where(specs: Sequence[str]) -> list[Condition]:
    """``COL=VALUE`` (keep rows whose COL is VALUE) and ``COL!=VALUE`` (drop them).

    The first ``!=`` or ``=`` splits; the value may contain more of them.
    """
    out = []
    for spec in specs:
        eq, neq = spec.find("="), spec.find("!=")
        negated = neq >= 0 and neq < eq
        column, value = (spec[:neq], spec[neq + 2 :]) if negated else (spec[:eq], spec[eq + 1 :])
        if eq < 0 or not column.strip():
            raise ValueError(f"--where {spec!r}: write COL=VALUE or COL!=VALUE")
        out.append((column.strip(), value, negated))
    return out


def cell(value: Any) -> str:
    """A cell as the text ``--where`` compares: booleans as ``true``/``false``, None as ``""``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({str(k) for r in rows for k in r})


def _show(conditions: Sequence[Condition]) -> str:
    return " ".join(f"--where {c}{'!=' if neg else '='}{v}" for c, v, neg in conditions)


def select_rows(
    rows: Sequence[dict[str, Any]], conditions: Sequence[Condition], source: str
) -> list[tuple[int, dict[str, Any]]]:
    """``(row number, row)`` of the rows that match every column's conditions.

    Values given for one column are alternatives (OR); conditions on different columns must all
    hold (AND); a negated value drops the rows that have it. An unknown column or a selection
    that leaves nothing is a ValueError naming the columns (and values) found.
    """
    columns = _columns(rows)
    keep: dict[str, set[str]] = {}
    drop: dict[str, set[str]] = {}
    for column, value, negated in conditions:
        if column not in columns:
            raise ValueError(f"--where: column {column!r} not in {source}; columns found: "
                             f"{', '.join(columns)}")
        (drop if negated else keep).setdefault(column, set()).add(value)
    selected = [
        (i, r) for i, r in enumerate(rows)
        if all(cell(r.get(c)) in values for c, values in keep.items())
        and all(cell(r.get(c)) not in values for c, values in drop.items())
    ]
    if not selected:
        seen = []
        for column in dict.fromkeys(c for c, _, _ in conditions):
            values = sorted({cell(r.get(column)) for r in rows})
            more = ", ..." if len(values) > 12 else ""
            seen.append(f"values of {column}: {', '.join(values[:12])}{more}")
        raise ValueError(f"no row of {source} ({len(rows)} rows) matches {_show(conditions)} "
                         f"({'; '.join(seen)})")
    return selected


def _column(columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str,
            source: str) -> str | None:
    """The column to read ``what`` from: ``given`` (which must exist), else the first of
    ``candidates`` present (exact, then case-insensitive), else None."""
    if given is not None:
        if given not in columns:
            raise ValueError(f"{what} column {given!r} not in {source}; columns found: "
                             f"{', '.join(columns)}")
        return given
    for candidate in candidates:
        if candidate in columns:
            return candidate
    lower = {c.lower(): c for c in columns}
    return next((lower[c.lower()] for c in candidates if c.lower() in lower), None)


# --------------------------------------------------------------------------------------------
# Prompt sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptSet:
    """The selected questions of a data file, its name, and how they were read."""

    name: str
    questions: list[Question]
    data: dict[str, Any]
    """``{"source", "prompt_column", "category_column", "where", "rows"}`` (``rows``: in the
    file, before ``where``), recorded in result files."""


def dataset_name(source: str | Path, where: Sequence[str] = ()) -> str:
    """A data set's default name: the file's stem (``hf:org/xstest:test`` -> ``xstest-test``)
    followed by the selection (``--where label=benign`` -> ``-label-benign``, ``!=`` -> ``-not-``).
    """
    text = str(source)
    if text.startswith("hf:"):
        repo, _, split = text[3:].partition(":")
        stem = repo.rstrip("/").rsplit("/", 1)[-1] + (f"-{split}" if split else "")
    else:
        stem = Path(text).stem
    for column, value, negated in parse_where(where):
        stem += f"-{column}-{'not-' if negated else ''}{value}"
    return stem


def prompt_set(
    source: str | Path,
    *,
    name: str | None = None,
    prompt_column: str | None = None,
    category_column: str | None = None,
    subcategory_column: str | None = None,
    where: Sequence[str] = (),
    id_prefix: str = "q",
    rows: Sequence[dict[str, Any]] | None = None,
) -> PromptSet:
    """Questions from any data file or ``hf:`` id (:func:`read_rows`), with row selection.

    ``prompt_column`` defaults to the first of :data:`PROMPT_FIELDS` present,
    ``category_column`` to ``category`` if present (else no categories); a column given that
    the file does not have is an error naming the columns found. ``where`` (``COL=VALUE`` /
    ``COL!=VALUE``, see :func:`select_rows`) selects rows. Question ids are
    ``<id_prefix>-<row number in the file>``, the same whatever the selection.
    """
    label = str(source)
    rows = read_rows(source) if rows is None else list(rows)
    if not rows:
        raise ValueError(f"{label} has no rows")
    columns = _columns(rows)
    prompt_col = _column(columns, prompt_column, PROMPT_FIELDS, "prompt", label)
    if prompt_col is None:
        raise ValueError(f"no prompt column ({', '.join(PROMPT_FIELDS)}) in {label}; give "
                         f"--prompt-column; columns found: {', '.join(columns)}")
    category_col = _column(columns, category_column, ("category",), "category", label)
    sub_col = _column(columns, subcategory_column, ("subcategory",), "subcategory", label)
    taxonomy_col = "taxonomy_category" if "taxonomy_category" in columns else None
    conditions = parse_where(where)
    questions = []
    for i, row in select_rows(rows, conditions, label):
        prompt = row.get(prompt_col)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{label}: row {i} has no prompt in column {prompt_col!r}")
        questions.append(Question(f"{id_prefix}-{i}", prompt.strip(),
                                  cell(row.get(category_col)) if category_col else "",
                                  cell(row.get(sub_col)) if sub_col else "",
                                  cell(row.get(taxonomy_col)) if taxonomy_col else ""))
    data = {"source": label, "prompt_column": prompt_col, "category_column": category_col,
            "where": list(where), "rows": len(rows)}
    return PromptSet(name or dataset_name(source, where), questions, data)


HALVES = ("steering", "reported")


def halves(prompts: PromptSet, seed: int) -> tuple[PromptSet, PromptSet]:
    """The set split in two by ``seed`` (each question by a hash of the seed and its id, so the
    split does not depend on the order or the other questions): the **steering** half, whose
    failures may steer the next data, and the **reported** half, never used to steer. The
    names are ``<name>-steer`` and ``<name>``; ``data["split"]`` says which half of how many."""
    import hashlib

    def steers(q: Question) -> bool:  # not a CRC: its parity is linear in the seed's bits
        return hashlib.sha256(f"{seed}:{q.id}".encode()).digest()[0] % 2 == 0

    steering = [q for q in prompts.questions if steers(q)]
    chosen = {q.id for q in steering}
    reported = [q for q in prompts.questions if q.id not in chosen]
    if not steering or not reported:
        raise ValueError(f"the {prompts.name} set ({len(prompts.questions)} questions) splits "
                         "into an empty half: too few questions to steer by one half and report "
                         "the other; give a larger set")

    def half(name: str, questions: list[Question], which: str) -> PromptSet:
        split = {"seed": seed, "half": which, "of": len(prompts.questions)}
        return PromptSet(name, questions, {**prompts.data, "split": split})

    return (half(f"{prompts.name}-steer", steering, "steering"),
            half(prompts.name, reported, "reported"))


def load_prompt_set(source: str | Path, **options: Any) -> list[Question]:
    """The questions of :func:`prompt_set` (same options)."""
    return prompt_set(source, **options).questions


def catqa_set(source: str | Path, **options: Any) -> PromptSet:
    """CatQA (550 questions, 11 categories x 5 subcategories x 10), as a prompt set named
    ``catqa`` (``options``: ``where``, ``name``)."""
    rows = None
    if not str(source).startswith("hf:"):
        data = json.loads(_existing(source).read_text("utf-8"))
        rows = catqa_rows(data)
        if rows is None:
            raise ValueError(f"{source} is not a CatQA file ({{category: {{subcategory: "
                             "[question, ...]}}}}); use --data for other files")
    return prompt_set(source, rows=rows, id_prefix="catqa",
                      name=options.pop("name", None) or "catqa", **options)


def beavertails_set(source: str | Path, **options: Any) -> PromptSet:
    """BeaverTails-Evaluation (700 prompts, 14 categories), as a prompt set named
    ``beavertails`` (``options``: ``where``, ``name``)."""
    return prompt_set(source, prompt_column="prompt", id_prefix="beavertails",
                      name=options.pop("name", None) or "beavertails", **options)


def load_catqa(source: str | Path, **options: Any) -> list[Question]:
    """CatQA questions (:func:`catqa_set`)."""
    return catqa_set(source, **options).questions


def load_beavertails(source: str | Path, **options: Any) -> list[Question]:
    """BeaverTails-Evaluation prompts (:func:`beavertails_set`)."""
    return beavertails_set(source, **options).questions


def load_mmlu(source: str | Path) -> list[MultipleChoice]:
    """MMLU in the qlora JSONL formatting (validation: 1,531 questions, 57 subjects)."""
    if str(source).startswith("hf:"):
        rows = _hf_rows(str(source))
    else:
        rows = [json.loads(line) for line in _existing(source).read_text("utf-8").split("\n")
                if line.strip()]
    return [MultipleChoice(f"mmlu-{i}", r["subject"], r["input"], r["output"].strip())
            for i, r in enumerate(rows)]


def load_questions(source: str | Path, category_field: str | None = None) -> list[Question]:
    """Generic prompt file (JSONL/JSON/CSV/TXT/Parquet or HF id) as questions ``q-<row>``."""
    return load_prompt_set(source, category_column=category_field)


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
            return load_prompt_set(path, rows=rows)
        if path.suffix == ".sqlite":
            return _run_prompts(path)
        if _is_catqa(path):
            return load_catqa(path)
        return load_questions(path)  # the resolved file (an export folder's data.jsonl)
    return load_questions(source)


def _is_catqa(path: Path) -> bool:
    """A CatQA-style JSON file: ``{category: {subcategory: [question, ...]}}``."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    data = json.loads(path.read_text("utf-8"))
    return isinstance(data, dict) and all(isinstance(v, dict) for v in data.values())


def _run_prompts(path: Path) -> list[Question]:
    import sqlite_utils

    from tools.store import run_id_of_store

    db = sqlite_utils.Database(_existing(path))
    run_id = run_id_of_store(path)  # a run folder's run: the id in its run.json (else all)
    where, params = ("where run_id = ? ", [run_id]) if run_id else ("", [])
    judged = "taxonomy_category" in db.table("samples").columns_dict  # a store from before: no
    taxonomy = "taxonomy_category" if judged else "null"
    rows = db.query(
        f"select id, prompt, weakness, {taxonomy} taxonomy_category from samples "
        f"{where}order by run_id, round, slot", params
    )
    return [Question(r["id"], r["prompt"], r["weakness"] or "", "", r["taxonomy_category"] or "")
            for r in rows]


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
