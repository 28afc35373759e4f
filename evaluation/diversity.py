"""Diversity of a prompt data set: distinct-n, categories and near-duplicates.

The paper (Wang et al., arXiv 2410.05269, Fig. 5) compares data sets by *distinct-n*: the number
of distinct word n-grams divided by the number of all word n-grams, for n = 1..8. Because
distinct-n falls as a data set grows, sets of different sizes are compared at an equal size:
the mean over a few random subsamples of exactly ``size`` prompts (`distinct_at_size`).

Tokens are `nodes.filters.words` (lower-case words); n-grams never cross prompt boundaries.
Near-duplicates use the generator's definition (`nodes.filters.DuplicateFilter`): same
normalised text, or Jaccard similarity of word uni+bigram shingles >= a threshold.

`evaluate_diversity` bundles everything into one JSON-ready result (``kind: "diversity"``) and
`write_result` stores it as ``<out_dir>/diversity-<name>.json``.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from evaluation.data import Question, load_prompts
from nodes.filters import DuplicateFilter, normalize, words

NS = range(1, 9)


def _ngram_counts(prompts: Sequence[str], n: int) -> tuple[int, int]:
    """(distinct, total) word n-grams over the prompts."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for prompt in prompts:
        toks = words(prompt)
        grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen), total


def distinct_n(prompts: Sequence[str], n: int) -> float:
    """Distinct word n-grams / all word n-grams across the prompts (0.0 when there are none)."""
    distinct, total = _ngram_counts(prompts, n)
    return distinct / total if total else 0.0


def distinct_curve(prompts: Sequence[str], ns: Iterable[int] = NS) -> dict[int, float]:
    """distinct-n for every n in ``ns``."""
    return {n: distinct_n(prompts, n) for n in ns}


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

    Categories are grouped by `nodes.filters.normalize` (case, punctuation, ``_`` ignored) and
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
    generator's own `nodes.filters.DuplicateFilter`, fed the prompts in order."""
    seen = DuplicateFilter([], threshold)
    flags = []
    for prompt in prompts:
        flags.append(seen.reason(prompt) is not None)
        seen.add(prompt)
    return flags


def near_duplicate_rate(prompts: Sequence[str], threshold: float = 0.8) -> float:
    """Share of prompts that are an exact or near duplicate of an earlier prompt (0.0 if none)."""
    flags = near_duplicate_flags(prompts, threshold)
    return sum(flags) / len(flags) if flags else 0.0


def _default_name(source: str | Path) -> str:
    text = str(source)
    if text.startswith("hf:"):
        return text[3:]
    path = Path(text)
    if path.name in ("run.sqlite", "data.jsonl"):
        path = path.parent
    return path.stem if path.is_file() else path.name


def _load(source: str | Path | Sequence[str] | Sequence[Question]) -> tuple[list[Question], str]:
    """Questions of ``source`` and its description for the result."""
    if isinstance(source, (str, Path)):
        return load_prompts(source), str(source)
    items = list(source)
    questions = [
        q if isinstance(q, Question) else Question(f"q-{i}", str(q), "")
        for i, q in enumerate(items)
    ]
    return questions, f"<list of {len(items)} prompts>"


def evaluate_diversity(
    source: str | Path | Sequence[str] | Sequence[Question],
    *,
    name: str | None = None,
    size: int | None = None,
    seeds: int = 5,
) -> dict[str, Any]:
    """Diversity of a data set as a JSON-ready result.

    ``source`` is anything `evaluation.data.load_prompts` accepts (run folder, ``run.sqlite``,
    export, prompt file, ``hf:`` id), a CatQA JSON file, or a list of prompts / `Question`s.
    With ``size``, distinct-n is also averaged over ``seeds`` subsamples of ``size`` prompts
    (ValueError if the data set is smaller).
    """
    questions, described = _load(source)
    if name is None:
        name = "prompts" if not isinstance(source, (str, Path)) else _default_name(source)
    prompts = [q.prompt for q in questions]
    at_size = None
    if size is not None:
        values = distinct_at_size(prompts, size, seeds, NS)
        at_size = {"size": size, "seeds": seeds, "values": {str(n): v for n, v in values.items()}}
    stats = category_stats(questions)
    return {
        "kind": "diversity",
        "name": name,
        "source": described,
        "n_prompts": len(prompts),
        "distinct": {str(n): v for n, v in distinct_curve(prompts, NS).items()},
        "distinct_at_size": at_size,
        "categories": stats["categories"],
        "prompts_per_category": stats["prompts_per_category"],
        "near_duplicate_rate": near_duplicate_rate(prompts),
    }


def result_path(kind: str, label: str, out_dir: Path) -> Path:
    """``<out_dir>/<kind>-<label>.json`` with ``label`` made safe for a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._-") or "unnamed"
    return Path(out_dir) / f"{kind}-{safe}.json"


def write_result(result: dict[str, Any], out_dir: Path) -> Path:
    """Write ``result`` to ``<out_dir>/diversity-<name>.json`` and return the path."""
    path = result_path("diversity", result["name"], out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return path
