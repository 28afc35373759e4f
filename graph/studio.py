"""Graphs for `langgraph dev` / LangGraph Studio, compiled without a checkpointer.

The LangGraph server brings its own persistence and refuses a graph compiled with one. Set
the endpoint with ``DATA_ADVISOR_BASE_URL`` / ``DATA_ADVISOR_MODEL`` (or in the run's context
in Studio) and start ``data-advisor serve`` or any OpenAI-compatible server first.

Each thread is a run folder of its own, ``<runs_dir>/<thread id>/`` (``StudioContext``,
``DATA_ADVISOR_RUNS_DIR``, default ``runs/studio``): its ``run.json`` is written when a run of
the thread starts (with that run's context) and its ``run.sqlite`` holds the data, so
``data-advisor status``, ``history`` and ``export`` accept the folder. The checkpoints stay
with the LangGraph server; ``studio.json`` marks the folder as a Studio thread's.
"""

from __future__ import annotations

import json
from typing import Any

from langgraph.runtime import Runtime

from graph.context import STUDIO_FILE, Context, StudioContext
from graph.graph import Method, Node, compile_graph
from graph.runner import Run
from graph.state import State
from nodes.common import run_id
from nodes.load_seeds import load_seeds, load_seeds_self_instruct
from tools.files import write_atomic


def in_run_folder(method: Method) -> Node:
    """``load_seeds``, after writing the thread's ``run.json`` into its run folder."""

    def load_seeds_in_run_folder(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        ctx = runtime.context
        folder = ctx.run_folder(run_id()) if isinstance(ctx, StudioContext) else None
        if isinstance(ctx, StudioContext) and folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            # the thread id is the run's id: its key in run.sqlite
            run = Run(folder, method, ctx.run_context(folder.name), embedded=False,
                      run_id=folder.name)
            run.save()
            marker = {"thread_id": folder.name, "graph": method,
                      "checkpoints": "kept by the LangGraph server (langgraph dev / Studio)"}
            write_atomic(folder / STUDIO_FILE, json.dumps(marker, indent=2) + "\n")
        start = load_seeds_self_instruct if method == "self_instruct" else load_seeds
        return start(state, runtime)

    load_seeds_in_run_folder.__name__ = "load_seeds"
    return load_seeds_in_run_folder


def studio_graph(method: Method) -> Any:
    """One method's graph for the LangGraph server."""
    return compile_graph(method, context_schema=StudioContext, start=in_run_folder(method))


data_advisor = studio_graph("data_advisor")
self_instruct = studio_graph("self_instruct")
