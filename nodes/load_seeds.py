"""load_seeds: validate the templates, put the seed prompts in the pool, start the summary.

It also records the sha256 of the templates the run (re)starts with, from the round they apply
to, so that an export names the templates that wrote its data.

Self-Instruct's start, :func:`load_seeds_self_instruct`, also puts the questions a trained
model failed on (``Context.steer_from``, ``tools.steering``) in the pool: that baseline has no
advisor to steer, its pool is its lever.

It runs first whenever a run starts from the top, also when a resume finds no pending step;
then it steps back a round the state shows open that the store does not show complete
(:func:`graph.state.round_unfinished`), with the counters of the rounds before it, so the
round runs again and its prompts are not counted twice: step 4 of the resume protocol in
``graph/runner.py``'s module docstring.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context
from graph.seeds import read_seeds
from graph.state import State, round_unfinished
from nodes.common import run_store, templates
from tools.steering import failed_questions
from tools.store import RunStore


def load_seeds(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Seed the pool (idempotent); on a fresh run, start the summary with the seed categories."""
    ctx = runtime.context
    used = templates(runtime)  # fail on a bad template before any LLM call
    if ctx.judge != "llm":  # recorded only for a run that uses it
        used = {name: text for name, text in used.items() if name != "prompt_judge"}
    store = run_store(runtime)
    store.seed_pool(read_seeds("prompts", ctx.seed_prompts_file))
    step_back = bool(state.round) and round_unfinished(store, state, ctx)
    store.record_templates(state.round if step_back else state.round + 1, used)
    if state.round:
        return {"round": state.round - 1, **_counters(store, state)} if step_back else {}
    categories = state.summary or read_seeds("categories", ctx.seed_categories_file)
    return {"summary": categories[-ctx.max_summary_lines :]}


def _counters(store: RunStore, state: State) -> dict[str, Any]:
    """The writes that set the state's counters to what the store records for the rounds
    before ``state.round``: ``kept`` and ``rejected`` are added to (each generator task adds
    its own), so they are written as the difference; ``responses`` as it is."""
    records = [r for r in store.rounds() if r["round"] < state.round]
    rejected: Counter[str] = Counter()
    for record in records:
        rejected.update(record.get("rejected") or {})
    kept = sum(r.get("kept") or 0 for r in records)
    reasons = set(rejected) | set(state.rejected)
    return {
        "kept": kept - state.kept,
        "responses": sum(r.get("responses") or 0 for r in records),
        "rejected": {r: rejected[r] - state.rejected.get(r, 0) for r in sorted(reasons)},
    }


def load_seeds_self_instruct(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """:func:`load_seeds`, then the failed questions of ``steer_from`` join the pool (once),
    visible from the next round on."""
    update = load_seeds(state, runtime)
    if runtime.context.steer_from:
        rounds = update.get("round", state.round)
        run_store(runtime).steer_pool(rounds, failed_questions(runtime.context.steer_from))
    return update
