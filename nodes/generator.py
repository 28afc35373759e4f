"""generator: K new harmful user prompts per round, each from a few random pool examples.

With a weakness (Data Advisor) the ``generator`` template targets it; without one
(Self-Instruct) the ``self_instruct_generator`` template asks for any new request. Requests are
sent concurrently and cut at the first line. Empty, too short, refusing, meta-commentary,
duplicate and near-duplicate outputs are rejected and counted, not stored as data. The round's
best prompt (the one least similar to the pool) joins the pool.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any
from weakref import WeakKeyDictionary

from langgraph.runtime import Runtime

from graph.context import Context
from graph.state import State
from graph.templates import render
from nodes.common import Stopwatch, bullets, run_store, templates
from nodes.filters import clean_line, rejection_reason
from tools.llm import generate, output_tokens
from tools.store import RunStore
from tools.text import DuplicateFilter

_KNOWN: WeakKeyDictionary[RunStore, tuple[int, float, DuplicateFilter]] = WeakKeyDictionary()
"""Per open run store: the duplicate filter of the prompts before a round, and that round."""


def known_prompts(store: RunStore, round_: int, threshold: float) -> DuplicateFilter:
    """A duplicate filter holding the pool and every prompt kept before ``round_``.

    Kept for the next round, which adds only the prompts of the rounds in between; rebuilt in a
    new process or when a run goes back to an earlier round. Callers must not add to it.
    """
    cached = _KNOWN.get(store)
    if cached is not None and cached[1] == threshold and cached[0] <= round_:
        seen = cached[2]
        for prompt in store.prompts_before(round_, since=cached[0]):
            seen.add(prompt)
    else:
        seen = DuplicateFilter([*store.pool(), *store.prompts_before(round_)], threshold)
    _KNOWN[store] = (round_, threshold, seen)
    return seen


def generator(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Generate, filter and store the round's prompts."""
    ctx, watch = runtime.context, Stopwatch()
    method = "data_advisor" if state.weakness else "self_instruct"
    template = templates(runtime)["generator" if state.weakness else "self_instruct_generator"]
    endpoint = ctx.endpoint("generator")
    rng = random.Random(f"{ctx.seed}:{state.round}")
    store = run_store(runtime)
    pool = store.pool()
    requests = []
    for _ in range(ctx.prompts_per_round):
        examples = rng.sample(pool, min(ctx.examples_per_request, len(pool)))
        message = render(
            template,
            examples=bullets(examples),
            weakness=state.weakness,
            principles=ctx.principles,
        )
        requests.append([("user", message)])
    answers = generate(
        "generator",
        endpoint,
        requests,
        max_concurrency=ctx.max_concurrency,
        temperature=ctx.generator_temperature,
        top_p=ctx.top_p,
        max_tokens=ctx.generator_max_tokens,
        stop=["\n"],
        run=store.run_id,  # a node retry re-sends only the requests that failed
    )
    known = known_prompts(store, state.round, ctx.near_duplicate_threshold)
    this_round = DuplicateFilter([], ctx.near_duplicate_threshold)
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for slot, answer in enumerate(answers):
        text = clean_line(str(answer.content))
        reason = (
            rejection_reason(text, min_words=ctx.min_prompt_words)
            or known.reason(text)
            or this_round.reason(text)
        )
        if reason:
            rejected.append({"slot": slot, "text": text, "reason": reason})
            continue
        this_round.add(text)
        kept.append(
            {
                "slot": slot,
                "prompt": text,
                "weakness": state.weakness or None,
                "method": method,
                "generator_model": endpoint.model,
            }
        )
    reasons = Counter(r["reason"] for r in rejected)
    with store.transaction():  # the round's record exists: its opener wrote it
        ids = store.save_round(state.round, kept, rejected)
        if kept:
            in_pool = DuplicateFilter(pool, ctx.near_duplicate_threshold)
            best = kept[in_pool.least_similar([row["prompt"] for row in kept])]
            store.add_to_pool(state.round, best["prompt"])
        store.update_round(
            state.round,
            kept=len(kept),
            rejected=dict(reasons),
            timing=("generator", watch.seconds, output_tokens(answers)),
        )
    totals = Counter(state.rejected)
    totals.update(reasons)
    return {
        "prompt_ids": ids,
        "round_prompts": [row["prompt"] for row in kept],  # replaced, not added: bounded by K
        "round_responses": [],
        "kept": state.kept + len(kept),
        "rejected": dict(totals),
    }
