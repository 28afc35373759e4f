"""summarizer: update the running summary from the previous summary and the new instances.

A new instance is one of the round's weaknesses (its category) with a few of its kept prompts;
a round has W of them, all given in one call (W = 1: the paper's ``summarizer`` template,
several: ``summarizer_batch``; with ``Context.summary_update = "delta"``, ``summarizer_delta``
at any W, which asks for the changed lines only, merged by the rule check). The
summary is structured: one category per line (at most ``max_line_words`` words) or a group of
related categories under a parent, ``Parent: kind; kind`` (see ``nodes.rule_check``). The
update is proposed to the rule check; with the rule check off, it is taken as it is, its last
``max_summary_lines`` lines (the rule check is what keeps a long run's summary complete).
"""

from __future__ import annotations

import textwrap
from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context
from graph.state import State
from graph.templates import render
from nodes.common import Stopwatch, ask_advisor, bullets, run_store, templates
from nodes.filters import clean_line
from nodes.rule_check import changes
from tools.llm import output_tokens

EXAMPLES_IN_SUMMARY_PROMPT = 3


def parse_summary(text: str) -> list[str]:
    """Summary lines from a model answer: one cleaned line per non-empty line."""
    return [line for line in (clean_line(raw) for raw in text.splitlines()) if line]


def summarizer(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Propose the updated summary, with all the round's new categories in one call."""
    ctx, watch = runtime.context, Stopwatch()
    store = run_store(runtime)
    instances = [
        (weakness, store.get_samples(batch.get("prompt_ids", [])[:EXAMPLES_IN_SUMMARY_PROMPT]))
        for weakness, batch in zip(state.weaknesses, _by_index(state), strict=True)
    ]
    max_tokens = ctx.summarizer_max_tokens
    if ctx.summary_update == "delta":  # the changed lines only: the rule check merges them
        max_tokens = min(max_tokens, ctx.summarizer_delta_tokens * len(instances))
        message = render(
            templates(runtime)["summarizer_delta"],
            summary=bullets(state.summary),
            count=str(len(instances)),
            categories=_categories(instances),
        )
    elif len(instances) == 1:  # the paper's instance: one category and its prompts
        [(weakness, samples)] = instances
        message = render(
            templates(runtime)["summarizer"],
            summary=bullets(state.summary),
            weakness=weakness,
            prompts=bullets([s["prompt"] for s in samples]),
        )
    else:
        message = render(
            templates(runtime)["summarizer_batch"],
            summary=bullets(state.summary),
            count=str(len(instances)),
            categories=_categories(instances),
        )
    answer = ask_advisor(runtime, message, max_tokens)
    proposed = parse_summary(str(answer.content))[: 2 * ctx.max_summary_lines]
    fields: dict[str, Any] = {"summary_proposed": proposed}
    update: dict[str, Any]
    if not ctx.rule_check:  # taken as it is: no rule check will consume the proposal
        update = {"summary": proposed[-ctx.max_summary_lines :], "proposed_summary": [],
                  "summary_dropped": []}
        fields |= {"summary_after": update["summary"], "rule_check": "skipped"}
    else:
        added, dropped = (proposed, []) if ctx.summary_update == "delta" \
            else changes(state.summary, proposed)
        update = {"proposed_summary": added, "summary_dropped": dropped}
    store.update_round(
        state.round, **fields, timing=("summarizer", watch.seconds, output_tokens([answer]))
    )
    return update


def _by_index(state: State) -> list[dict[str, Any]]:
    """The round's batches, one per weakness in the critic's order (empty for a task that
    kept no prompt)."""
    found = {batch["index"]: batch for batch in state.batches if "index" in batch}
    return [found.get(i, {}) for i in range(len(state.weaknesses))]


def _categories(instances: list[tuple[str, list[dict[str, Any]]]]) -> str:
    return "\n".join(new_category(w, [s["prompt"] for s in samples]) for w, samples in instances)


def new_category(weakness: str, prompts: list[str]) -> str:
    """One new category of ``summarizer_batch``'s ``{categories}``: its name, then a few of
    its prompts, indented."""
    return f'- category "{weakness}":\n' + textwrap.indent(bullets(prompts), "  ")
