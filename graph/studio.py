"""Graphs for `langgraph dev` / LangGraph Studio, compiled without a checkpointer.

The LangGraph server brings its own persistence and refuses a graph compiled with one. Set
the endpoint with ``DATA_ADVISOR_BASE_URL`` / ``DATA_ADVISOR_MODEL`` (or in the run's context
in Studio) and start ``data-advisor serve`` or any OpenAI-compatible server first.
"""

from __future__ import annotations

from graph.graph import compile_graph

data_advisor = compile_graph("data_advisor")
self_instruct = compile_graph("self_instruct")
