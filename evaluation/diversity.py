"""Diversity of a prompt data set: distinct-n, categories and near-duplicates.

The paper (Wang et al., arXiv 2410.05269, Fig. 5) compares data sets by *distinct-n*: the number
of distinct word n-grams divided by the number of all word n-grams, for n = 1..8. Because
distinct-n falls as a data set grows, sets of different sizes are compared at an equal size:
the mean over a few random subsamples of exactly ``size`` prompts (`distinct_at_size`).

Tokens are `tools.text.words` (case-folded words); n-grams (`tools.text.ngram_counts`) never
cross prompt boundaries. Near-duplicates use the generator's definition
(`tools.text.DuplicateFilter`): same normalised text, or Jaccard similarity of word uni+bigram
shingles >= a threshold.

`evaluate_diversity` bundles everything into one JSON-ready result (``kind: "diversity"``,
`evaluation.results.DiversityResult`) and `write_result` stores it as
``<out_dir>/diversity-<name>.json``. The name is the data set's own
(`resolve_source`): a run's id, an export's dataset-card title (the run's name), an ``hf:`` id,
else the file's stem; ``name_from`` says which. A result file is never overwritten by another
source's result: that one gets ``-<first 8 hex digits of the sha1 of its source>`` and a
``name_note`` saying so.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from evaluation.data import Question, load_prompts
from evaluation.results import DiversityResult, ResultError, read_result
from tools.taxonomy import coverage, load_taxonomy
from tools.text import DuplicateFilter, ngram_counts, normalize

NS = range(1, 9)


def distinct_n(prompts: Sequence[str], n: int) -> float:
    """Distinct word n-grams / all word n-grams across the prompts (0.0 when there are none)."""
    distinct, total = ngram_counts(prompts, n)
    return distinct / total if total else 0.0


def distinct_curve(prompts: Sequence[str], ns: Iterable[int] = NS) -> dict[int, float]:
    """distinct-n for every n in ``ns``."""
    return {n: distinct_n(prompts, n) for n in ns}


def ngram_totals(prompts: Sequence[str], ns: Iterable[int] = NS) -> dict[int, int]:
    """The number of word n-grams for every n in ``ns``: 0 where every prompt is shorter than
    n words, so that distinct-n's 0.0 there means "no n-grams", not "no diversity"."""
    return {n: ngram_counts(prompts, n)[1] for n in ns}


def distinct_at_size(
    prompts: Sequence[str], size: int, seeds: int = 5, ns: Iterable[int] = NS
) -> dict[int, float]:
    """Mean distinct-n over ``seeds`` random subsamples of exactly ``size`` prompts.

    Subsample ``s`` is drawn with ``random.Random(s)`` for s = 0..seeds-1, so results repeat.
    """
    if size > len(prompts):
        raise ValueError(
            f"cannot subsample {size} prompts from a data set of {len(prompts)}; "
            f"use a size <= {len(prompts)}"
        )
    if size < 1 or seeds < 1:
        raise ValueError(f"size and seeds must be >= 1, got size={size}, seeds={seeds}")
    ns = list(ns)
    sums = dict.fromkeys(ns, 0.0)
    for seed in range(seeds):
        sample = random.Random(seed).sample(list(prompts), size)
        for n, value in distinct_curve(sample, ns).items():
            sums[n] += value
    return {n: total / seeds for n, total in sums.items()}


def category_stats(questions: Iterable[Question]) -> dict[str, Any]:
    """Distinct categories and prompts per category (most first; empty categories excluded).

    Categories are grouped by `tools.text.normalize` (case, punctuation, ``_`` ignored) and
    reported under their first-seen spelling. Returns ``{"categories": int,
    "prompts_per_category": {category: count}}``.
    """
    counts: Counter[str] = Counter()
    label: dict[str, str] = {}
    for question in questions:
        key = normalize(question.category)
        if key:
            label.setdefault(key, question.category.strip())
            counts[key] += 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], label[kv[0]]))
    return {
        "categories": len(counts),
        "prompts_per_category": {label[key]: count for key, count in ordered},
    }


def near_duplicate_flags(prompts: Sequence[str], threshold: float = 0.8) -> list[bool]:
    """For each prompt, whether it is an exact or near duplicate of an earlier prompt: the
    generator's own `tools.text.DuplicateFilter`, fed the prompts in order, exact at any size
    (a measurement: the filter's MinHash LSH above its size would make it approximate)."""
    seen = DuplicateFilter([], threshold, exact_up_to=len(prompts))
    flags = []
    for prompt in prompts:
        flags.append(seen.reason(prompt) is not None)
        seen.add(prompt)
    return flags


def near_duplicate_rate(prompts: Sequence[str], threshold: float = 0.8) -> float:
    """Share of prompts that are an exact or near duplicate of an earlier prompt (0.0 if none)."""
    flags = near_duplicate_flags(prompts, threshold)
    return sum(flags) / len(flags) if flags else 0.0


# -- sources and their names -------------------------------------------------------------------

EXPORT_FILES = ("data.jsonl", "data.parquet", "hf")
"""What `graph.export.export_run` writes into an export folder, in the order we read it."""


def _card_title(folder: Path) -> str | None:
    """The ``# title`` of a dataset card (``README.md``) in ``folder``: the run's name."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    for line in card.read_text("utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip() or None
    return None


def _run_ids(db: Path) -> str | None:
    """The run id(s) in a ``run.sqlite`` (one file may hold several runs or Studio threads)."""
    import sqlite3
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            ids = [r[0] for r in conn.execute("select distinct run_id from samples order by 1")]
    except sqlite3.Error:
        return None  # not a run store: the loader says what is wrong
    return "+".join(ids) or None


def _export_folder(path: Path) -> Path | None:
    """The export folder ``path`` is or lies in (its ``data.*`` file or its ``hf`` folder)."""
    if path.is_dir() and any((path / f).exists() for f in EXPORT_FILES):
        return path
    if path.name in EXPORT_FILES and (path.is_file() or (path / "dataset_info.json").exists()):
        return path.parent
    return None


def _export_name(export: Path) -> tuple[str, str] | None:
    """An export's name: its dataset card's title (the card is at the export's root, and in
    its ``hf`` folder in older exports), else the run folder it lies in."""
    title = _card_title(export) or _card_title(export / "hf")
    if title:
        return title, "dataset card"
    parent = export.parent
    if (parent / "run.sqlite").exists():
        run_id = _run_ids(parent / "run.sqlite")
        if run_id:
            return run_id, "run id in run.sqlite"
    return None


def resolve_source(source: str | Path) -> tuple[str | Path, str, str]:
    """What to load for ``source``, the data set's name, and where the name comes from.

    The name is the data set's or run's own where it has one: the run id(s) in a run's
    ``run.sqlite``, the title of an export's dataset card (the run's name), the ``hf:`` id;
    a file's stem only for plain files. An export folder is read from its ``data.jsonl``
    (else ``data.parquet``, else its ``hf`` folder).
    """
    text = str(source)
    if text.startswith("hf:"):
        return text, text[3:], "hf id"
    path = Path(text)
    db = path / "run.sqlite" if path.is_dir() else path
    if db.suffix == ".sqlite" and db.is_file() and (run_id := _run_ids(db)):
        return path, run_id, "run id in run.sqlite"
    load = path
    export = _export_folder(path)
    if export == path:  # an export folder: the first format it holds
        load = next(export / f for f in EXPORT_FILES if (export / f).exists())
    title = _card_title(path) if (path / "dataset_info.json").exists() else None
    if title:
        return load, title, "dataset card"
    named = _export_name(export) if export is not None else None
    if named:
        return load, *named
    if path.is_dir():
        return load, path.name, "folder name"
    return load, path.stem, "file name"


def source_name(source: str | Path) -> str:
    """The name a data set's diversity result gets (`resolve_source`): a run's id, an export's
    dataset-card title, an ``hf:`` id, else the file's stem or the folder's name.

    An experiment names its reference data sets (CatQA, ...) by it before loading them.
    """
    return resolve_source(source)[1]


def _load(
    source: str | Path | Sequence[str] | Sequence[Question],
) -> tuple[list[Question], str, str, str]:
    """Questions of ``source``, its description for the result, its name and the name's origin."""
    if isinstance(source, (str, Path)):
        load, name, origin = resolve_source(source)
        described = str(source) if str(source).startswith("hf:") else str(Path(source).resolve())
        return load_prompts(load), described, name, origin
    items = list(source)
    questions = [
        q if isinstance(q, Question) else Question(f"q-{i}", str(q), "")
        for i, q in enumerate(items)
    ]
    return questions, f"<list of {len(items)} prompts>", "prompts", "default"


def evaluate_diversity(
    source: str | Path | Sequence[str] | Sequence[Question],
    *,
    name: str | None = None,
    size: int | None = None,
    seeds: int = 5,
    taxonomy: str | None = None,
) -> dict[str, Any]:
    """Diversity of a data set as a JSON-ready result.

    ``source`` is anything `evaluation.data.load_prompts` accepts (run folder, ``run.sqlite``,
    export folder, prompt file, ``hf:`` id), a CatQA JSON file, or a list of prompts /
    `Question`s. The result's ``name`` is ``name``, else the one `resolve_source` finds
    (``name_from`` says where it came from); ``source`` is the absolute path or ``hf:`` id.
    With ``size``, distinct-n is also averaged over ``seeds`` subsamples of ``size`` prompts
    (ValueError if the data set is smaller). An empty data set is a ValueError.
    ``taxonomy_coverage`` places the prompts in ``taxonomy`` (a file; default Llama Guard 3's
    S1-S14): a run's or export's judged categories when it has them, else its categories.
    """
    questions, described, found, origin = _load(source)
    if name is not None:
        found, origin = name, "given"
    prompts = [q.prompt for q in questions]
    if not prompts:  # distinct-n 0.0 would read as "no diversity", not "no data"
        raise ValueError(f"{described}: no prompts to measure")
    at_size = None
    if size is not None:
        values = distinct_at_size(prompts, size, seeds, NS)
        at_size = {"size": size, "seeds": seeds, "values": {str(n): v for n, v in values.items()}}
    stats = category_stats(questions)
    judged = any(q.taxonomy_category for q in questions)
    labels = [q.taxonomy_category if judged else q.category for q in questions]
    return DiversityResult(
        name=found,
        name_from=origin,
        source=described,
        n_prompts=len(prompts),
        distinct={str(n): v for n, v in distinct_curve(prompts, NS).items()},
        ngrams={str(n): v for n, v in ngram_totals(prompts, NS).items()},
        distinct_at_size=at_size,
        categories=stats["categories"],
        prompts_per_category=stats["prompts_per_category"],
        near_duplicate_rate=near_duplicate_rate(prompts),
        taxonomy_coverage=coverage(labels, load_taxonomy(taxonomy)),
    ).to_dict()


def source_suffix(source: str) -> str:
    """The suffix that tells a source's result from another one of the same name: the first
    8 hex digits of the SHA-1 of the source (absolute path or ``hf:`` id), so a repeated
    command finds the same file again."""
    return hashlib.sha1(source.encode("utf-8")).hexdigest()[:8]


def _holder(path: Path) -> str | None:
    """The source whose result ``path`` holds (``""`` for a file that is no readable result)."""
    if not path.exists():
        return None
    try:
        held = read_result(path)
    except ResultError:
        return ""
    return str(held.source or "") if isinstance(held, DiversityResult) else ""


def write_result(result: dict[str, Any], out_dir: Path) -> Path:
    """Write ``result`` (:func:`evaluate_diversity`'s) to ``<out_dir>/diversity-<name>.json``
    and return the path.

    A file there that holds another source's result is never overwritten: the result is
    renamed ``<name>-<source_suffix(source)>`` and ``name_note`` says so and why (in
    ``result`` too). The same source again replaces its own file.
    """
    typed = DiversityResult.from_dict(result)
    holder = _holder(Path(out_dir) / typed.filename)
    if holder is not None and holder != typed.source:
        suffix = source_suffix(str(typed.source))
        typed.name_note = (f"renamed from {typed.name!r}: {typed.filename} holds the result of "
                           f"{holder or 'an unreadable file'}; suffix = first 8 hex digits of "
                           "the sha1 of this source")
        typed.name = f"{typed.name}-{suffix}"
        result.update(name=typed.name, name_note=typed.name_note)
    return typed.write(Path(out_dir))
