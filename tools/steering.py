"""Steering from a trained model's failures: where a safety result is still harmful.

A safety result (``safety-<set>-<label>.json``, written by ``data-advisor eval safety`` or the
experiment) has a harmful rate per category and, beside it, the caches of the model's
responses and of the judge's verdicts (``responses_file`` and ``judgments_file``, relative to
the result's folder). :func:`read_failures` turns one or more such results into the categories
with the highest harmful rate (the counts summed over the results, so several data sets or
targets can steer together), each with a few of the questions the model failed on:

- the weakness critic gets them as its ``{failures}`` placeholder (:func:`failures_text`): the
  advisor is asked to target these categories while the summary still says what is covered;
- Self-Instruct has no advisor: its lever is its pool, so the failed questions join the pool
  as in-context examples (:func:`failed_questions`).

Format knowledge is kept to the few JSON keys named here, so this module needs nothing from the
evaluation package (the generation layers may not import it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.files import TextFileError, read_json, read_jsonl
from tools.hashing import file_sha256

DEFAULT_CATEGORIES = 3
"""Categories the critic is told about."""
DEFAULT_EXAMPLES = 2
"""Failed questions shown per category."""


class SteeringError(ValueError):
    """A file given to steer from is not a usable safety result (the message says why)."""


@dataclass(frozen=True)
class Failure:
    """A category where the model is still harmful: its rate over ``n`` questions, and the
    questions it failed on (in file order)."""

    category: str
    harmful: int
    n: int
    questions: tuple[str, ...]

    @property
    def harmful_rate(self) -> float:
        """Share of the category's questions judged harmful."""
        return self.harmful / self.n if self.n else 0.0


def _result(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SteeringError(f"{path}: no such file; give a safety result "
                            "(results/safety-<set>-<label>.json)")
    try:
        data = read_json(path, hint="give a safety result written by `data-advisor eval safety`")
    except TextFileError as exc:
        raise SteeringError(str(exc)) from None
    if not isinstance(data, dict) or data.get("kind") != "safety":
        raise SteeringError(f"{path} is not a safety result (kind "
                            f"{data.get('kind') if isinstance(data, dict) else None!r}); give "
                            "results/safety-<set>-<label>.json")
    for key in ("responses_file", "judgments_file"):
        if not data.get(key) or not (path.parent / data[key]).is_file():
            raise SteeringError(f"{path}: its {key} ({data.get(key)}) is missing beside it; "
                                "steer from a results folder as evaluation wrote it")
    return data


def _failed(path: Path) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str]]]:
    """A result's ``{category: (harmful, n)}`` (its own numbers: ``per_category``, else the
    overall rate as ``uncategorized``) and its failed ``(category, question)`` pairs from the
    caches beside it, in file order."""
    data = _result(path)
    per = data.get("per_category")
    if isinstance(per, dict) and per:
        counts = {str(c): (round(float(v["harmful_rate"]) * int(v["n"])), int(v["n"]))
                  for c, v in per.items()}
    else:
        n = int(data.get("n") or 0)
        counts = {"uncategorized": (round(float(data.get("harmful_rate") or 0) * n), n)}
    responses = {str(r["id"]): r for r in read_jsonl(path.parent / data["responses_file"])
                 if "id" in r}
    failed = []
    for judgment in read_jsonl(path.parent / data["judgments_file"]):
        answer = responses.get(str(judgment.get("id")))
        if answer is not None and judgment.get("safe") is False:
            failed.append((str(answer.get("category") or "uncategorized"), str(answer["prompt"])))
    return counts, failed


def read_failures(paths: Sequence[str | Path], *, categories: int = DEFAULT_CATEGORIES
                  ) -> list[Failure]:
    """The ``categories`` categories with the highest harmful rate over the results in
    ``paths`` (the results' own counts, summed; ties: more failures first, then by name), each
    with the questions failed there; only categories with a failure."""
    totals: dict[str, list[int]] = {}
    failed: dict[str, list[str]] = {}
    for path in paths:
        counts, questions = _failed(Path(path))
        for category, (harmful, n) in counts.items():
            total = totals.setdefault(category, [0, 0])
            total[0] += harmful
            total[1] += n
        for category, question in questions:
            if question not in failed.setdefault(category, []):
                failed[category].append(question)
    ranked = sorted((Failure(c, h, n, tuple(failed.get(c, []))) for c, (h, n) in totals.items()
                     if h), key=lambda f: (-f.harmful_rate, -f.harmful, f.category))
    return ranked[:categories]


def failures_text(failures: Sequence[Failure], examples: int = DEFAULT_EXAMPLES) -> str:
    """The critic's ``{failures}``: an empty string without failures, else a paragraph that
    starts with two newlines (so a template can put the placeholder right after a line and
    stay unchanged when there is none)."""
    if not failures:
        return ""
    lines = ["", "", "A model trained on this dataset still answers harmful requests in these "
             "categories (harmful rate on held-out questions); give priority to kinds of harm "
             "within or close to them that the dataset does not cover yet:"]
    for f in failures:
        shown = "; ".join(json.dumps(q, ensure_ascii=False) for q in f.questions[:examples])
        lines.append(f"- {f.category} ({100 * f.harmful_rate:.0f}% of {f.n})"
                     + (f", e.g. {shown}" if shown else ""))
    return "\n".join(lines)


def failed_questions(paths: Sequence[str | Path]) -> list[str]:
    """Every question the results' caches hold a harmful verdict for, once each, in file
    order."""
    seen: dict[str, None] = {}
    for path in paths:
        for _, question in _failed(Path(path))[1]:
            seen.setdefault(question, None)
    return list(seen)


def steering_digests(paths: Sequence[str | Path]) -> dict[str, str]:
    """``{path: sha256}`` of the result files (what a run records it was steered by)."""
    return {str(p): file_sha256(Path(p)) for p in paths}
