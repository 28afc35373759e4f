"""Shared fixtures: a loopback OpenAI-compatible stub and helpers to run graphs against it."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from graph.context import Context
from graph.graph import checkpoint_serializer, compile_graph
from graph.state import State
from testing.stub_server import StubServer
from tools.store import RunStore

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Give the test process (and the processes it starts) the default stop signals.

    A shell starts background jobs with SIGINT ignored and `nohup` ignores SIGHUP; ignored
    dispositions are inherited across exec, and the product rightly leaves an ignored signal
    ignored. The Ctrl-C / SIGTERM / SIGHUP tests need the defaults, wherever CI is run from.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


def make_context(stub: StubServer, tmp_path: Path, **overrides: Any) -> Context:
    values: dict[str, Any] = {
        "base_url": stub.base_url,
        "model": "stub",
        "data_path": str(tmp_path / "run.sqlite"),
        "rounds": 2,
        "prompts_per_round": 4,
        "max_retries": 2,
        "request_timeout": 10.0,
    }
    values.update(overrides)
    return Context(**values)


@pytest.fixture
def context(stub: StubServer, tmp_path: Path) -> Callable[..., Context]:
    return lambda **overrides: make_context(stub, tmp_path, **overrides)


def run_graph(method: str, ctx: Context, thread_id: str = "t1") -> tuple[State, RunStore]:
    """Run a graph to its end with a SQLite checkpointer next to the data."""
    conn = sqlite3.connect(
        Path(ctx.data_path).with_name("checkpoints.sqlite"), check_same_thread=False
    )
    graph = compile_graph(method, SqliteSaver(conn, serde=checkpoint_serializer()))  # type: ignore[arg-type]
    config = {"configurable": {"thread_id": thread_id}, "recursion_limit": 200}
    final = graph.invoke({}, config, context=ctx)
    conn.close()
    return State(**final), RunStore(ctx.data_path, thread_id)


def handler_with(overrides: Callable[[dict[str, Any], str], str | None]) -> Callable[[dict], str]:
    """The default stub handler, with answers replaced where ``overrides`` returns text."""
    from testing.stub_server import data_advisor_handler

    def handler(body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        replaced = overrides(body, text)
        return data_advisor_handler(body) if replaced is None else replaced

    return handler


def run_studio(ctx: Any, thread_id: str, method: str = "data_advisor") -> tuple[Any, Any]:
    """Run one Studio thread in process (``graph/studio.py``'s start node; an in-memory saver
    stands in for the LangGraph server's): the graph and the thread's config, to read its state.
    """
    from langgraph.checkpoint.memory import InMemorySaver

    from graph.context import StudioContext
    from graph.studio import in_run_folder
    from tools.store import close_shared

    graph = compile_graph(method, InMemorySaver(), context_schema=StudioContext,
                          start=in_run_folder(method))
    config: Any = {"configurable": {"thread_id": thread_id}}
    try:
        graph.invoke({}, config, context=ctx)
    finally:
        close_shared()
    return graph, config


def save_tiny_llama(path: Path, **overrides: Any) -> Path:
    """A tiny random Llama with the SmolLM2 tokenizer (local cache; nothing fetched)."""
    return save_tiny_model(path, "LlamaForCausalLM", **({
        "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
        "num_key_value_heads": 2, "max_position_embeddings": 256} | overrides))


def save_tiny_model(path: Path, architecture: str, **overrides: Any) -> Path:
    """A tiny random model of ``architecture`` (:func:`testing.tiny_models.save_tiny`) with the
    SmolLM2 tokenizer (skipped when the default model cannot be made here)."""
    from testing.tiny_models import save_tiny
    from tools.default_model import ensure_default_model

    try:
        source = ensure_default_model()
    except Exception as exc:  # noqa: BLE001 - no cached model and no way to make it
        pytest.skip(f"default model not available: {exc}")
    return save_tiny(path, architecture, source, **overrides)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved like a hub model."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def cli(*args: str) -> list[str]:
    """The ``data-advisor`` command line, as a subprocess runs it."""
    return [sys.executable, "-m", "experiment.cli", *args]


def cli_ok(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``data-advisor ARGS`` to its end; it must succeed (its stderr shown otherwise)."""
    done = subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done


def kill_when(args: list[str], found: Callable[[], int | None], what: str) -> int:
    """Run ``data-advisor ARGS`` and SIGKILL it once ``found()`` returns a round; that round
    (``what`` says what was waited for, when the run ended first)."""
    proc = subprocess.Popen(cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed_in = time.time() + 90, None
    while time.time() < deadline and proc.poll() is None and not killed_in:
        killed_in = found()
        time.sleep(0.01)
    proc.kill()
    proc.wait(30)
    assert killed_in, f"the run ended before {what}"
    return killed_in
