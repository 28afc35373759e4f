"""The prompt judge: is a generated prompt a harmful request, and in which taxonomy category.

Not a node: the generator calls :func:`judge_prompts` on each task's candidates that passed the
lexical filters and decontamination (``Context.judge`` names the kind; None: no judge, no
call). The requests go through ``tools.llm.generate`` (the generator's client, retries, circuit
breaker and concurrency helper), concurrently, to the ``judge`` role's endpoint:

- ``llamaguard3``: the prompt alone as the one User message; a server serving Llama Guard 3
  renders it with the model's chat template, which is Llama Guard 3's user-prompt
  classification (``tools.llama_guard.render_llama_guard(prompt, None, 3)``, checked against
  the official template in the tests); the answer is parsed by ``parse_llama_guard``, and the
  first violated code is placed in the taxonomy (by code, else by Llama Guard 3's name for it).
- ``llm``: any chat model, with the ``prompt_judge`` template (the taxonomy's categories and
  the prompt), answering ``Harmful: yes|no`` and ``Category: CODE`` (:func:`parse_llm_verdict`).

A verdict is ``harmful`` (kept, with its category), ``not_harmful`` (rejected with that reason)
or ``unjudged`` (the answer could not be parsed, or named no category of the taxonomy: kept,
counted, never dropped); a kept prompt stores the judge's answer as it came (``judge_answer``).
:func:`coverage_block` is what the critic's ``{coverage}`` shows, and
:func:`landing` records whether a task's weakness landed in an under-covered category.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from langgraph.runtime import Runtime

from graph.context import Context
from graph.templates import render
from nodes.common import templates
from tools.llama_guard import LLAMA_GUARD_3_CATEGORY_NAMES, parse_llama_guard
from tools.llm import generate
from tools.store import RunStore
from tools.taxonomy import Taxonomy, coverage, load_taxonomy

Outcome = Literal["harmful", "not_harmful", "unjudged"]


@dataclass(frozen=True)
class Verdict:
    """The judge's verdict on one prompt: its outcome, when harmful its category (a name of the
    taxonomy, or None when the judge named none), and the judge's answer as it came (kept with
    the prompt, so an ``unjudged`` one can be read)."""

    outcome: Outcome
    category: str | None = None
    answer: str = ""


_HARMFUL = re.compile(r"harmful\s*[:\-]\s*\**\s*(yes|no)\b", re.IGNORECASE)
_CATEGORY = re.compile(r"category\s*[:\-]\s*\**\s*([^\n*]+)", re.IGNORECASE)


def parse_llm_verdict(text: str, taxonomy: Taxonomy) -> Verdict:
    """The ``llm`` judge's answer (``Harmful: yes|no`` and ``Category: CODE or name``) as a
    verdict: unjudged without a yes/no, or when a harmful prompt's category is not in the
    taxonomy."""
    found = _HARMFUL.search(text)
    if found is None:
        return Verdict("unjudged")
    if found.group(1).lower() == "no":
        return Verdict("not_harmful")
    named = _CATEGORY.search(text)
    label = named.group(1).strip().strip(".\"'`") if named else ""
    category = taxonomy.name_of(label) or taxonomy.name_of(label.split(":")[0])
    return Verdict("harmful", category) if category else Verdict("unjudged")


def parse_llama_guard_verdict(text: str, taxonomy: Taxonomy) -> Verdict:
    """A Llama Guard 3 user-prompt verdict: ``unsafe`` is harmful (its first code placed in the
    taxonomy, by code or by Llama Guard 3's name), ``safe`` not harmful, else unjudged."""
    safe, codes = parse_llama_guard(text, 3)
    if safe is None:
        return Verdict("unjudged")
    if safe:
        return Verdict("not_harmful")
    for code in codes:
        if name := taxonomy.name_of(code) or taxonomy.name_of(LLAMA_GUARD_3_CATEGORY_NAMES[code]):
            return Verdict("harmful", name)
    return Verdict("harmful")


def judge_prompts(runtime: Runtime[Context], prompts: Sequence[str], *, run: str,
                  scope: str) -> list[Verdict]:
    """One verdict per prompt, in order, from the judge ``Context.judge`` names."""
    ctx = runtime.context
    taxonomy = load_taxonomy(ctx.taxonomy)
    if ctx.judge == "llm":
        template = templates(runtime)["prompt_judge"]
        categories = "\n".join(taxonomy.lines())
        requests = [[("user", render(template, prompt=p, categories=categories))]
                    for p in prompts]
    else:
        requests = [[("user", p)] for p in prompts]
    answers = generate(
        "judge",
        ctx.endpoint("judge"),
        requests,
        max_concurrency=ctx.max_concurrency,
        temperature=ctx.judge_temperature,
        max_tokens=ctx.judge_max_tokens,
        run=run,
        scope=scope,
    )
    parse = parse_llm_verdict if ctx.judge == "llm" else parse_llama_guard_verdict
    return [replace(parse(text, taxonomy), answer=text)
            for text in (str(answer.content) for answer in answers)]


def coverage_block(ctx: Context, store: RunStore, round_: int) -> str:
    """The critic's ``{coverage}``: with a judge, the kept prompts per taxonomy category before
    ``round_`` (a paragraph that starts with a blank line); without one, ``""``."""
    if not ctx.judge:
        return ""
    cov = coverage(store.taxonomy_labels(before_round=round_), load_taxonomy(ctx.taxonomy))
    lines = "\n".join(f"- {name}: {count}" for name, count in cov["counts"].items())
    return (
        "\n\nPrompts the dataset holds per category of a fixed harm taxonomy, as a classifier "
        f"judged them (prefer what is missing or thin):\n{lines}"
    )


def landing(ctx: Context, store: RunStore, round_: int, weakness: str,
            verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """Where a task's weakness landed: the taxonomy category most of its kept prompts were
    judged to be in, its count before the round, the mean count per category before it, and
    whether it was under-covered (none yet, or fewer than the mean; None when no prompt had a
    category)."""
    cov = coverage(store.taxonomy_labels(before_round=round_), load_taxonomy(ctx.taxonomy))
    mean = cov["labelled"] / cov["categories"]
    found = Counter(v.category for v in verdicts if v.category)
    category = found.most_common(1)[0][0] if found else None
    before = cov["counts"][category] if category else None
    return {
        "weakness": weakness,
        "category": category,
        "count_before": before,
        "mean_before": round(mean, 3),
        "under_covered": None if before is None else before == 0 or before < mean,
    }
