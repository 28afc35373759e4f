"""Graph state: small and bounded, so a checkpoint does not grow with the dataset.

The dataset itself lives in the run store (``tools.store``); the state only carries the round
in progress, the running summary (bounded by ``max_summary_lines``), the round's W weaknesses,
the ids and texts of the round's kept prompts, one batch per weakness, and a preview of their
responses (at most W x K, replaced every round, so that a Studio user sees what each round
produced) and counters. The fields that the W generator tasks of a round write side by side
(one ``Send`` each) have reducers: ``round`` (they agree), ``batches``, ``kept``, ``rejected``.

:func:`round_unfinished` tells from the store whether the state's round finished, from the
nodes its record says it needs (written when the round opens, ``graph.graph.round_nodes``):
the runner's :func:`graph.runner.phase_of` asks it where a run stands, ``load_seeds`` whether
to step a round back (the resume protocol: ``graph/runner.py``'s module docstring).
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Annotated, Any

from graph.context import Context
from tools.store import RunStore

RESPONSE_PREVIEW = 300
"""Characters of each response kept in the state (the full text is in the run store)."""

Batch = dict[str, Any]
"""What one generator task of a round produced, as the state shows it: ``round``, ``index``
(the weakness's position in the round), ``weakness`` (``""`` for Self-Instruct),
``prompt_ids`` and ``prompts`` (its kept prompts). An entry with a ``round`` and no ``index``
is a round's opening: it empties the list (:func:`opened`)."""


def latest(current: Any, update: Any) -> Any:
    """Reducer: the last write of a step wins (the writers of one step agree: the fan-out
    tasks of a round all write its number)."""
    return update


def add_counts(current: Mapping[str, int], update: Mapping[str, int]) -> dict[str, int]:
    """Reducer: counts by reason, added (each generator task adds its own rejections; a
    negative count takes back, a reason counted 0 is dropped)."""
    total = Counter(current)
    total.update(update)
    return {reason: n for reason, n in total.items() if n}


def merge_batches(current: Sequence[Batch], update: Sequence[Batch]) -> list[Batch]:
    """Reducer of :attr:`State.batches`: the batches of the newest round, by index.

    A batch of a newer round replaces the older round's; one of the same round replaces the
    batch with its index (a task run again) or joins the others; a round's opening (no
    ``index``) empties the list. So the state never shows one round's number with another
    round's prompts, whichever order the tasks of a round finish in.
    """
    kept: dict[int, Batch] = {}
    newest = 0
    for entry in [*current, *update]:
        if "index" not in entry:
            kept, newest = {}, entry["round"]
        elif entry["round"] > newest:
            kept, newest = {entry["index"]: entry}, entry["round"]
        elif entry["round"] == newest:
            kept[entry["index"]] = entry
    return [kept[i] for i in sorted(kept)]


def opened(round_: int) -> list[Batch]:
    """The ``batches`` write of a round's opening: no batch yet."""
    return [{"round": round_}]


@dataclass
class GeneratorTask:
    """One generator task (a ``Send``): K prompts for one weakness of a round."""

    round: int
    index: int
    """The weakness's position in the round (0 ... W - 1): its rows are slots
    ``index * K ... index * K + K - 1`` of the round."""
    weakness: str = ""
    """The weakness to write for; ``""`` for Self-Instruct."""


@dataclass
class State:
    """State of a Data Advisor or Self-Instruct run."""

    round: Annotated[int, latest] = 0
    """The round in progress or, between rounds, the last one finished (1-based; 0 before the
    first). The first node of a round opens it (Self-Instruct: its W generator tasks)."""
    summary: list[str] = field(default_factory=list)
    """Running summary of covered harm categories, one category per line."""
    weaknesses: list[str] = field(default_factory=list)
    """The weaknesses (harm categories) targeted by the round in progress (W of them)."""
    weaknesses_novel: list[bool] = field(default_factory=list)
    """For each weakness, whether the critic found it new (else a fallback)."""
    proposed_summary: list[str] = field(default_factory=list)
    """The summarizer's update, before the rule check, as what it changes: the lines it adds or
    rewrites, in its order (a rewrite's unchanged old lines are not repeated: the state would
    carry a second copy of the summary; :attr:`summary_dropped` has the old lines it left out).
    Emptied once the rule check has used it (the round record keeps the whole proposal as
    ``summary_proposed``)."""
    summary_dropped: list[str] = field(default_factory=list)
    """The old lines the summarizer's rewrite left out (the rule check restores them); empty
    for a delta update (``Context.summary_update``), which repeats no old line."""
    batches: Annotated[list[Batch], merge_batches] = field(default_factory=list)
    """The round's kept prompts, one batch per generator task (at most K each, replaced every
    round, so that a Studio user sees what each round produced): :func:`merge_batches`."""
    round_responses: Annotated[list[str], latest] = field(default_factory=list)
    """Previews of the responses to :attr:`round_prompts`, in the same order (empty until the
    responder has run): at most ``RESPONSE_PREVIEW`` characters each, cut ones end with "…"."""
    kept: Annotated[int, operator.add] = 0
    """Prompts kept so far (each generator task adds its own)."""
    rejected: Annotated[dict[str, int], add_counts] = field(default_factory=dict)
    """Generator outputs rejected so far, by reason."""
    responses: int = 0
    """Responses written so far."""

    @property
    def prompt_ids(self) -> list[str]:
        """Ids of the round's kept prompts in the run store, batch by batch."""
        return [i for batch in self.batches for i in batch.get("prompt_ids", [])]

    @property
    def round_prompts(self) -> list[str]:
        """Texts of the round's kept prompts, in the order of :attr:`prompt_ids`."""
        return [p for batch in self.batches for p in batch.get("prompts", [])]


def task_entry(index: int, width: int) -> str:
    """A generator task's name in its round's record: ``generator`` when the round has one
    (W = 1, today's record), else ``generator[index]``: each task records its timing as it
    finishes, and the round is complete once all have (:func:`record_unfinished`)."""
    return "generator" if width == 1 else f"generator[{index}]"


LEGACY_STATE_KEYS = frozenset({"weakness", "weakness_novel", "prompt_ids", "round_prompts"})
"""State fields of checkpoints written before the generator fanned out (one weakness, the
round's prompts as two lists); LangGraph still returns them with such a checkpoint's values."""


def is_legacy(values: Mapping[str, Any]) -> bool:
    """True for the values of a checkpoint written before the generator fanned out: its
    pending step belongs to the graph of then, so a resume starts from the top instead
    (``graph/runner.py``, the resume protocol's step 4)."""
    return bool(LEGACY_STATE_KEYS & values.keys())


def state_of(values: Mapping[str, Any]) -> State:
    """The :class:`State` a checkpoint's ``values`` hold; a checkpoint from before the fan-out
    (:data:`LEGACY_STATE_KEYS`) has its round's weakness and prompts read into ``weaknesses``
    and ``batches``."""
    known = {f.name for f in fields(State)}
    state = State(**{k: v for k, v in values.items() if k in known})
    if is_legacy(values) and not state.weaknesses and not state.batches:
        weakness = values.get("weakness") or ""
        state.weaknesses = [weakness] if weakness else []
        state.weaknesses_novel = [bool(values.get("weakness_novel", True))] if weakness else []
        if values.get("prompt_ids"):
            state.batches = [{"round": state.round, "index": 0, "weakness": weakness,
                              "prompt_ids": list(values["prompt_ids"]),
                              "prompts": list(values.get("round_prompts") or [])}]
    return state


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


def run_finished(state: State, ctx: Context) -> bool:
    """The stopping rule: true once the round bound or the target size is reached (checked
    between rounds, and by the last round's responder). Whether a run is finished also
    depends on its last round being complete: ``graph.runner.phase_of``."""
    return state.round >= ctx.rounds or (
        ctx.target_size is not None and state.kept >= ctx.target_size
    )
