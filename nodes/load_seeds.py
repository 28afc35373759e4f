"""load_seeds: validate the templates, put the seed prompts in the pool, start the summary.

It also records the sha256 of the templates the run (re)starts with, from the round they apply
to, so that an export names the templates that wrote its data.

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
from tools.store import RunStore


def load_seeds(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Seed the pool (idempotent); on a fresh run, start the summary with the seed categories."""
    ctx = runtime.context
    used = templates(runtime)  # fail on a bad template before any LLM call
    store = run_store(runtime)
    store.seed_pool(read_seeds("prompts", ctx.seed_prompts_file))
    step_back = bool(state.round) and round_unfinished(store, state, ctx)
    store.record_templates(state.round if step_back else state.round + 1, used)
    if state.round:
        return {"round": state.round - 1, **_counters(store, state.round)} if step_back else {}
    categories = state.summary or read_seeds("categories", ctx.seed_categories_file)
    return {"summary": categories[-ctx.max_summary_lines :]}


def _counters(store: RunStore, before_round: int) -> dict[str, Any]:
    """The state's counters as the store records them for the rounds before ``before_round``."""
    records = [r for r in store.rounds() if r["round"] < before_round]
    rejected: Counter[str] = Counter()
    for record in records:
        rejected.update(record.get("rejected") or {})
    return {
        "kept": sum(r.get("kept") or 0 for r in records),
        "responses": sum(r.get("responses") or 0 for r in records),
        "rejected": dict(rejected),
    }
