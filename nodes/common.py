"""What every node shares: the run's store and templates, a stopwatch for its cost, bullets,
one question to the advisor.

The store and the templates come from the LangGraph runtime (the run's context and thread);
:class:`Stopwatch` times a node call for its round record; :func:`bullets` lays out lines for a
template's placeholder; :func:`ask_advisor` sends the critic's and the summarizer's one message.
"""

from __future__ import annotations

import time
from functools import lru_cache

from langchain_core.messages import AIMessage
from langgraph.config import get_config
from langgraph.runtime import Runtime

from graph.context import Context
from graph.templates import load_templates
from tools.llm import generate
from tools.steering import failures_text, read_failures, steering_digests
from tools.store import RunStore, shared_store


def run_id() -> str:
    """The run's id: the LangGraph thread id (in the CLI the id in ``run.json``, which
    stays when the folder is moved or renamed; in Studio the thread's id)."""
    try:
        configurable = get_config().get("configurable", {})
    except RuntimeError:
        return "default"
    return str(configurable.get("thread_id") or "default")


def run_store(runtime: Runtime[Context]) -> RunStore:
    """This run's store: one connection shared by all node calls of the run in this process.

    Its file is the context's choice for the thread (a Studio thread has a run folder of its own).
    """
    thread = run_id()
    return shared_store(runtime.context.store_path(thread), thread)


def templates(runtime: Runtime[Context]) -> dict[str, str]:
    """The run's validated templates, by node name."""
    return load_templates(runtime.context.prompts_dir, runtime.context.prompts)


class Stopwatch:
    """Wall time since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Seconds elapsed."""
        return time.perf_counter() - self.start


def bullets(lines: list[str]) -> str:
    """Lines as a bulleted block for a template's placeholder."""
    return "\n".join(f"- {line}" for line in lines) if lines else "- (none yet)"


def ask_advisor(runtime: Runtime[Context], message: str, max_tokens: int) -> AIMessage:
    """The advisor's answer to one user message, at the run's advisor sampling settings."""
    ctx = runtime.context
    [answer] = generate(
        "advisor",
        ctx.endpoint("advisor"),
        [[("user", message)]],
        temperature=ctx.advisor_temperature,
        top_p=ctx.top_p,
        max_tokens=max_tokens,
        run=run_id(),
    )
    return answer


@lru_cache(maxsize=16)
def _failures(paths: tuple[str, ...], digests: tuple[str, ...], categories: int,
              examples: int) -> str:
    # keyed by the files' content too: a result evaluated again is read again
    return failures_text(read_failures(paths, categories=categories), examples)


def steering_text(ctx: Context) -> str:
    """The critic's ``{failures}`` for the run's ``steer_from`` results ("" without)."""
    if not ctx.steer_from:
        return ""
    paths = tuple(ctx.steer_from)
    return _failures(paths, tuple(steering_digests(paths).values()), ctx.steer_categories,
                     ctx.steer_examples)
