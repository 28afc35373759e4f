"""Graph state: small and bounded, so a checkpoint does not grow with the dataset.

The dataset itself lives in the run store (``tools.store``); the state only carries the round
in progress, the running summary (bounded by ``max_summary_lines``), the current weakness, the
ids and texts of the round's kept prompts and a preview of their responses (at most K each,
replaced every round, so that a Studio user sees what each round produced) and counters.

:func:`round_unfinished` tells from the store whether the state's round finished, from the
nodes its record says it needs (written when the round opens, ``graph.graph.round_nodes``):
the runner's :func:`graph.runner.phase_of` asks it where a run stands, ``load_seeds`` whether
to step a round back (the resume protocol: ``graph/runner.py``'s module docstring).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graph.context import Context
from tools.store import RunStore

RESPONSE_PREVIEW = 300
"""Characters of each response kept in the state (the full text is in the run store)."""


@dataclass
class State:
    """State of a Data Advisor or Self-Instruct run."""

    round: int = 0
    """The round in progress or, between rounds, the last one finished (1-based; 0 before the
    first). The first node of a round opens it."""
    summary: list[str] = field(default_factory=list)
    """Running summary of covered harm categories, one category per line."""
    weakness: str = ""
    """The weakness (harm category) targeted by the round in progress."""
    weakness_novel: bool = True
    proposed_summary: list[str] = field(default_factory=list)
    """The summarizer's update, before the rule check; emptied once the rule check has used
    it (the round record keeps it as ``summary_proposed``)."""
    prompt_ids: list[str] = field(default_factory=list)
    """Ids of the round's kept prompts in the run store."""
    round_prompts: list[str] = field(default_factory=list)
    """Texts of the round's kept prompts, in the order of ``prompt_ids`` (replaced each round)."""
    round_responses: list[str] = field(default_factory=list)
    """Previews of the responses to ``round_prompts``, in the same order (empty until the
    responder has run): at most ``RESPONSE_PREVIEW`` characters each, cut ones end with "…"."""
    kept: int = 0
    """Prompts kept so far."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Generator outputs rejected so far, by reason."""
    responses: int = 0
    """Responses written so far."""


LEGACY_ROUND_NODES: dict[str, tuple[str, ...]] = {
    "data_advisor": ("weakness_critic", "generator", "summarizer", "responder"),
    "self_instruct": ("generator", "responder"),
}
"""Only for round records written before they named their nodes (no ``nodes`` field): the
nodes a round of each method ran then (Data Advisor also ``rule_check`` when it was on). New
records carry their own list (``graph.graph.ROUND_NODES`` is the declaration)."""


def nodes_needed(record: Mapping[str, Any], ctx: Context) -> tuple[str, ...]:
    """The nodes a round must finish: the ones its record names, else the legacy table's."""
    recorded = record.get("nodes")
    if recorded is not None:
        return tuple(recorded)
    method = record.get("method") or ""
    rule_check = ("rule_check",) if method == "data_advisor" and ctx.rule_check else ()
    return LEGACY_ROUND_NODES.get(method, ()) + rule_check


def record_unfinished(record: Mapping[str, Any], ctx: Context) -> bool:
    """True if one of the nodes the round needs has not finished (it has no timing yet)."""
    return not set(nodes_needed(record, ctx)) <= set(record.get("timings") or {})


def round_unfinished(store: RunStore, state: State, ctx: Context) -> bool:
    """True if round ``state.round`` was opened but not every one of its nodes finished."""
    record = store.get_round(state.round) if state.round else None
    if record is None:
        return state.round > 0
    return record_unfinished(record, ctx)
