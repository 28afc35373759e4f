"""load_seeds: validate the prompts, put the seed prompts in the pool, start the summary."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context
from graph.seeds import read_seeds
from graph.state import State
from nodes.run import prompts, run_store


def load_seeds(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Seed the pool (idempotent); on a fresh run, start the summary with the seed categories."""
    ctx = runtime.context
    prompts(runtime)  # fail on a bad template before any LLM call
    run_store(runtime).seed_pool(read_seeds("prompts", ctx.seed_prompts_file))
    if state.round:
        return {}
    categories = state.summary or read_seeds("categories", ctx.seed_categories_file)
    return {"summary": categories[-ctx.max_summary_lines :]}
