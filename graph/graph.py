"""Graph wiring: the Data Advisor loop and the Self-Instruct baseline.

Data Advisor::

    load_seeds -> weakness_critic =W=> generator x W -+-> summarizer -> [rule_check] -+
                        ^                             +-> responder                   |
                        +--------------------------- next round ----------------------+

The critic names W weaknesses (``Context.weaknesses_per_round``); ``=W=>`` is a fan-out with
LangGraph's ``Send``: one generator task per weakness, all in one superstep, their requests
side by side on the server (bounded together by ``max_concurrency``). A task that fails is
retried alone (its node's retry policy); its rows are keyed by (round, slot), slot
``index * K + k``, so a task run again replaces its own rows. W = 1 is the paper's loop, step
for step. The responder needs only the round's prompts and the summarizer only the prompts and
their categories, so the two run side by side (one superstep): the responder's batch and the
summarizer's call share the server. The next round starts once both are done.

Self-Instruct (no advice), at the same budget (W batches of K prompts a round)::

    load_seeds =W=> generator x W -> responder -> (next round) =W=> generator x W ...

The first node of a round (``weakness_critic``, or Self-Instruct's generator tasks) opens it:
``State.round`` is the round in progress, or the last one finished. Opening a round writes its
record with the nodes it needs (:data:`ROUND_NODES`, declared here once, next to the wiring;
one entry per generator task, ``graph.state.task_entry``), so the store can tell a finished
round from an unfinished one (the resume protocol: ``graph/runner.py``). The rule check is
switchable at run time (``Context.rule_check``). A run ends after ``Context.rounds`` rounds, or
once ``Context.target_size`` prompts are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import wraps
from typing import Any, Literal, Protocol

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime, get_runtime
from langgraph.types import Send

from graph.context import Context
from graph.state import GeneratorTask, State, opened, run_finished, task_entry
from nodes.common import run_store
from nodes.generator import generator
from nodes.load_seeds import load_seeds, load_seeds_self_instruct
from nodes.responder import responder
from nodes.rule_check import rule_check
from nodes.summarizer import summarizer
from nodes.weakness_critic import weakness_critic
from tools.llm import NODE_RETRY

Method = Literal["data_advisor", "self_instruct"]
METHODS: tuple[Method, ...] = ("data_advisor", "self_instruct")


class Node(Protocol):
    """A node: ``(state, runtime) -> update``."""

    def __call__(self, state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        """The state update of one step."""
        ...


Graph = StateGraph[State, Context, State, State]
"""An uncompiled graph of either method."""


ROUND_NODES: dict[Method, tuple[str, ...]] = {
    "data_advisor": ("weakness_critic", "generator", "summarizer", "rule_check", "responder"),
    "self_instruct": ("generator", "responder"),
}
"""The nodes every round of each method runs, as the builders below wire them (all nodes but
``load_seeds``; Data Advisor's ``rule_check`` only when ``Context.rule_check`` is on). A round
record names them when the round opens and is complete once each has recorded its timing; the
generator fans out into W tasks, named one entry each (``generator[2]``; ``generator`` when
W = 1), each recorded as that task finishes."""


def round_nodes(method: Method, ctx: Context) -> tuple[str, ...]:
    """The nodes a round of ``method`` needs under ``ctx``: what a round record names."""
    width = ctx.weaknesses_per_round
    names: list[str] = []
    for node in ROUND_NODES[method]:
        if node == "generator":
            names += [task_entry(i, width) for i in range(width)]
        elif node != "rule_check" or ctx.rule_check:
            names.append(node)
    return tuple(names)


def opens_round(node: Node, method: Method) -> Node:
    """The node as the first of a round: it works on ``round + 1`` and sets it in the state.

    Before the node's work, the round's record is written with the nodes the round needs
    (:func:`round_nodes`, with the rule check as the context says now). It also clears the
    previous round's prompts and responses from the state, so that the state never shows one
    round's number with another round's prompts.
    """

    @wraps(node)
    def opener(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        next_round = replace(state, round=state.round + 1)
        nodes = round_nodes(method, runtime.context)
        run_store(runtime).start_round(next_round.round, method, nodes=nodes)
        cleared = {"batches": opened(next_round.round), "round_responses": []}
        return {"round": next_round.round, **cleared, **node(next_round, runtime)}

    return opener


class TaskNode(Protocol):
    """A node run as ``Send`` tasks: ``(task, runtime) -> update``."""

    def __call__(self, state: GeneratorTask, runtime: Runtime[Context]) -> dict[str, Any]:
        """The state update of one task (``state`` is the task)."""
        ...


def tasks_open_round(node: TaskNode, method: Method) -> TaskNode:
    """Generator tasks that open their round (Self-Instruct's): each writes the round's record
    (the same one, once) and sets the round; their batches replace the previous round's."""

    @wraps(node)
    def opener(state: GeneratorTask, runtime: Runtime[Context]) -> dict[str, Any]:
        nodes = round_nodes(method, runtime.context)
        run_store(runtime).start_round(state.round, method, nodes=nodes)
        return {"round": state.round, "round_responses": [], **node(state, runtime)}

    return opener


def fan_out(round_: int, weaknesses: list[str]) -> list[Send]:
    """One generator task per weakness of round ``round_`` (``Send``)."""
    return [Send("generator", GeneratorTask(round_, i, w)) for i, w in enumerate(weaknesses)]


def _to_generators(state: State) -> list[Send]:
    """After the critic: a task per weakness it named."""
    return fan_out(state.round, state.weaknesses)


def _next_round(first: str) -> Callable[[State], str | list[Send]]:
    """Between rounds: END once the run is finished, else the next round's first node (the
    generator tasks of a new round, without weaknesses, when that is the generator)."""

    def route(state: State) -> str | list[Send]:
        ctx = get_runtime(Context).context
        if run_finished(state, ctx):
            return END
        if first == "generator":
            return fan_out(state.round + 1, [""] * ctx.weaknesses_per_round)
        return first

    route.__name__ = "next_round"
    return route


def _after_summarizer(state: State) -> str | list[Send]:
    if get_runtime(Context).context.rule_check:
        return "rule_check"
    return _next_round("weakness_critic")(state)


def build_data_advisor(
    context_schema: type[Context] = Context, start: Node = load_seeds
) -> Graph:
    """The Data Advisor state machine (uncompiled); ``start`` is its ``load_seeds`` node."""
    builder = StateGraph(State, context_schema=context_schema)
    builder.add_node("load_seeds", start)
    critic = opens_round(weakness_critic, "data_advisor")
    builder.add_node("weakness_critic", critic, retry_policy=NODE_RETRY)
    builder.add_node(
        "generator", generator, input_schema=GeneratorTask, retry_policy=NODE_RETRY
    )
    builder.add_node("summarizer", summarizer, retry_policy=NODE_RETRY)
    builder.add_node("rule_check", rule_check)
    builder.add_node("responder", responder, retry_policy=NODE_RETRY)
    builder.add_edge(START, "load_seeds")
    builder.add_conditional_edges(
        "load_seeds", _next_round("weakness_critic"), ["weakness_critic", END]
    )
    builder.add_conditional_edges("weakness_critic", _to_generators, ["generator"])
    builder.add_edge("generator", "summarizer")
    builder.add_edge("generator", "responder")  # side by side with the summarizer
    builder.add_conditional_edges(
        "summarizer", _after_summarizer, ["rule_check", "weakness_critic", END]
    )
    builder.add_conditional_edges(
        "rule_check", _next_round("weakness_critic"), ["weakness_critic", END]
    )
    return builder


def build_self_instruct(
    context_schema: type[Context] = Context, start: Node = load_seeds_self_instruct
) -> Graph:
    """The Self-Instruct baseline: same generator and responder, no advice (uncompiled)."""
    builder = StateGraph(State, context_schema=context_schema)
    builder.add_node("load_seeds", start)
    builder.add_node(
        "generator",
        tasks_open_round(generator, "self_instruct"),
        input_schema=GeneratorTask,
        retry_policy=NODE_RETRY,
    )
    builder.add_node("responder", responder, retry_policy=NODE_RETRY)
    builder.add_edge(START, "load_seeds")
    builder.add_conditional_edges("load_seeds", _next_round("generator"), ["generator", END])
    builder.add_edge("generator", "responder")
    builder.add_conditional_edges("responder", _next_round("generator"), ["generator", END])
    return builder


def checkpoint_serializer() -> JsonPlusSerializer:
    """The serializer for a run's checkpoints: LangGraph's, with the app's own type a
    checkpoint holds (a pending ``Send``'s :class:`GeneratorTask`) allowed by name, and no
    other class outside LangGraph's safe types (as ``LANGGRAPH_STRICT_MSGPACK`` would have it)."""
    return JsonPlusSerializer(
        allowed_msgpack_modules=[(GeneratorTask.__module__, GeneratorTask.__name__)]
    )


def compile_graph(
    method: Method,
    checkpointer: BaseCheckpointSaver[Any] | None = None,
    *,
    context_schema: type[Context] = Context,
    start: Node | None = None,
) -> CompiledStateGraph[State, Context, State, State]:
    """Compile one method's graph, optionally with a checkpointer.

    ``context_schema`` and ``start`` (the ``load_seeds`` node; default: the method's own) are
    how Studio's graphs give each thread a run folder (``graph/studio.py``).
    """
    builders = {"data_advisor": build_data_advisor, "self_instruct": build_self_instruct}
    if method not in builders:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    default = load_seeds if method == "data_advisor" else load_seeds_self_instruct
    builder = builders[method](context_schema, start or default)
    return builder.compile(checkpointer=checkpointer, name=method)
