"""generator: K new harmful user prompts for one weakness, each from a few random pool examples.

It runs as one ``Send`` task per weakness of the round (``graph.state.GeneratorTask``; W tasks
side by side, W = ``Context.weaknesses_per_round``). With a weakness (Data Advisor) the
``generator`` template targets it; without one (Self-Instruct) the ``self_instruct_generator``
template asks for any new request. Requests are sent concurrently and cut at the first line.
Empty, too short, refusing, meta-commentary, contaminated (overlapping the evaluation sets of
``Context.decontaminate``), duplicate and near-duplicate outputs (against the pool, earlier
rounds and the round's other tasks) are rejected and counted, not stored as data. With a
prompt judge (``Context.judge``, ``nodes.judge``), the outputs that pass the lexical filters and
decontamination are judged, concurrently: one judged not harmful is rejected as
``not_harmful``; a kept one stores its verdict (``harmful``, or ``unjudged`` for an answer that
could not be parsed) and taxonomy category, and the round records where the task's weakness
landed in the taxonomy (``weakness_coverage``).
Each task's rows are slots ``index * K ... index * K + K - 1`` of its round, replaced when the
task runs again. Each task's best prompt (the one least similar to the pool) joins the pool.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any
from weakref import WeakKeyDictionary

from langgraph.runtime import Runtime

from graph.context import Context
from graph.state import GeneratorTask, task_entry
from graph.templates import render
from nodes.common import Stopwatch, bullets, run_store, templates
from nodes.filters import clean_line, contamination_reason, rejection_reason
from nodes.judge import Verdict, judge_prompts, landing
from tools.decontam import index_of_files
from tools.llm import generate, output_tokens
from tools.store import RunStore
from tools.text import EXACT_UP_TO, DuplicateFilter

_KNOWN: WeakKeyDictionary[RunStore, tuple[int, float, DuplicateFilter]] = WeakKeyDictionary()
"""Per open run store: the duplicate filter of the prompts before a round, and that round."""


def known_prompts(
    store: RunStore, round_: int, threshold: float, exact_up_to: int = EXACT_UP_TO
) -> DuplicateFilter:
    """A duplicate filter holding the pool and every prompt kept before ``round_``.

    Kept for the next round, which adds only the prompts of the rounds in between; rebuilt in a
    new process or when a run goes back to an earlier round. Callers must not add to it.
    """
    cached = _KNOWN.get(store)
    if (cached is not None and cached[1] == threshold and cached[0] <= round_
            and cached[2].exact_up_to == exact_up_to):
        seen = cached[2]
        for prompt in store.prompts_before(round_, since=cached[0]):
            seen.add(prompt)
    else:
        pool = store.pool(before_round=round_)
        seen = DuplicateFilter([*pool, *store.prompts_before(round_)], threshold,
                               exact_up_to=exact_up_to)
    _KNOWN[store] = (round_, threshold, seen)
    return seen


def generator(state: GeneratorTask, runtime: Runtime[Context]) -> dict[str, Any]:
    """Generate, filter and store one task's K prompts (one weakness of the round): ``state``
    is the task (the node's input, sent by ``graph.graph.fan_out``)."""
    ctx, watch = runtime.context, Stopwatch()
    method = "data_advisor" if state.weakness else "self_instruct"
    template = templates(runtime)["generator" if state.weakness else "self_instruct_generator"]
    endpoint = ctx.endpoint("generator")
    k = ctx.prompts_per_round
    slots = range(state.index * k, (state.index + 1) * k)
    # the first task's seed is the one a round had before fan-out: W = 1 is today's run
    rng = random.Random(f"{ctx.seed}:{state.round}" + (f":{state.index}" if state.index else ""))
    store = run_store(runtime)
    pool = store.pool(before_round=state.round)  # as the round found it, whichever task is first
    requests = []
    for _ in slots:
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
        max_concurrency=ctx.max_concurrency,  # one pool per bound: all tasks' requests share it
        temperature=ctx.generator_temperature,
        top_p=ctx.top_p,
        max_tokens=ctx.generator_max_tokens,
        stop=["\n"],
        run=store.run_id,  # a node retry re-sends only the requests that failed
        scope=f"{state.round}:{state.index}",
    )
    # Lexical filters and decontamination first, then the judge (if any) on what is left,
    # concurrently and outside the store's lock, so the round's tasks judge side by side.
    contamination = index_of_files(
        ctx.decontaminate, n=ctx.decontaminate_ngram, threshold=ctx.decontaminate_threshold)
    texts = [clean_line(str(answer.content)) for answer in answers]
    early = [rejection_reason(text, min_words=ctx.min_prompt_words)
             or contamination_reason(text, contamination) for text in texts]
    candidates = [at for at, reason in enumerate(early) if reason is None]
    verdicts: dict[int, Verdict] = {}
    if ctx.judge:
        judged = judge_prompts(runtime, [texts[at] for at in candidates], run=store.run_id,
                               scope=f"{state.round}:{state.index}:judge")
        verdicts = dict(zip(candidates, judged, strict=True))
    # The round's other tasks store their rows under the store's lock, one after another: a
    # task filters against the rows of those before it, so no two tasks keep one prompt.
    with store.transaction():  # the round's record exists: its opener wrote it
        known = known_prompts(store, state.round, ctx.near_duplicate_threshold,
                              ctx.near_duplicate_exact_up_to)
        others = store.round_prompts(state.round, excluding=slots)
        this_round = DuplicateFilter(others, ctx.near_duplicate_threshold,
                                     exact_up_to=ctx.near_duplicate_exact_up_to)
        kept: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        kept_verdicts: list[Verdict] = []
        for at, (slot, text) in enumerate(zip(slots, texts, strict=True)):
            verdict = verdicts.get(at)
            reason = (
                early[at]
                or known.reason(text)
                or this_round.reason(text)
                or (verdict.outcome if verdict and verdict.outcome == "not_harmful" else None)
            )
            if reason:
                rejected.append({"slot": slot, "text": text, "reason": reason})
                continue
            this_round.add(text)
            row = {
                "slot": slot,
                "prompt": text,
                "weakness": state.weakness or None,
                "method": method,
                "generator_model": endpoint.model,
            }
            if verdict is not None:
                row |= {"judge_verdict": verdict.outcome, "taxonomy_category": verdict.category,
                        "judge_answer": verdict.answer}
                kept_verdicts.append(verdict)
            kept.append(row)
        reasons = Counter(r["reason"] for r in rejected)
        ids = store.save_round(state.round, kept, rejected, slots=slots)
        if kept:
            in_pool = DuplicateFilter(pool, ctx.near_duplicate_threshold,
                                      exact_up_to=ctx.near_duplicate_exact_up_to)
            best = kept[in_pool.least_similar([row["prompt"] for row in kept])]
            store.add_to_pool(state.round, best["prompt"], index=state.index)
        if ctx.judge:
            store.set_round_entry(state.round, "weakness_coverage", state.index, landing(
                ctx, store, state.round, state.weakness, kept_verdicts))
        round_kept, round_rejected = store.round_counts(state.round)
        store.update_round(
            state.round,
            kept=round_kept,
            rejected=round_rejected,
            timing=(
                task_entry(state.index, ctx.weaknesses_per_round),
                watch.seconds,
                output_tokens(answers),
            ),
        )
    batch = {
        "round": state.round,
        "index": state.index,
        "weakness": state.weakness,
        "prompt_ids": ids,
        "prompts": [row["prompt"] for row in kept],  # bounded by K
    }
    return {"batches": [batch], "kept": len(kept), "rejected": dict(reasons)}
