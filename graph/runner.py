"""Running a graph in a run folder: checkpoints, the embedded server, progress, clean stops.

A run folder holds ``run.json`` (method and context, no secrets), ``run.sqlite`` (the data
tables), ``checkpoints.sqlite`` (LangGraph's checkpoints, thread id = run name) and
``vllm.log`` when the embedded server was used. :func:`execute` starts a run, or resumes it
from its last checkpoint after a crash or Ctrl-C, restarting the embedded server if needed.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from graph.context import Context
from graph.graph import Method, compile_graph, run_finished
from graph.prompts import load_prompts
from graph.seeds import read_seeds
from graph.state import State
from nodes.load_seeds import round_unfinished
from tools.store import RunStore, close_shared, shared_store

RUN_FILE = "run.json"
DB_FILE = "run.sqlite"
CHECKPOINT_FILE = "checkpoints.sqlite"
SERVER_LOG = "vllm.log"


class RunError(RuntimeError):
    """A run folder cannot be started or resumed as asked."""


@dataclass
class Run:
    """A run folder and what was asked of it."""

    folder: Path
    method: Method
    context: Context
    embedded: bool
    """True when the run serves its model with the embedded vLLM server."""
    embedded_model: str | None = None

    @property
    def name(self) -> str:
        """The run's name (its folder name), also its LangGraph thread id."""
        return self.folder.name

    @property
    def db_path(self) -> Path:
        """The run's SQLite file."""
        return self.folder / DB_FILE

    @property
    def checkpoint_path(self) -> Path:
        """LangGraph's checkpoint file."""
        return self.folder / CHECKPOINT_FILE

    def config(self, recursion_limit: int | None = None) -> dict[str, Any]:
        """LangGraph config of the run's thread."""
        limit = recursion_limit or 8 * self.context.rounds + 16
        return {"configurable": {"thread_id": self.name}, "recursion_limit": limit}

    def save(self) -> None:
        """Write ``run.json``."""
        ctx = self.context.to_dict()
        ctx.pop("data_path")
        data = {
            "method": self.method,
            "embedded": self.embedded,
            "embedded_model": self.embedded_model,
            "context": ctx,
        }
        (self.folder / RUN_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> Run:
        """Read a run folder; a clear :class:`RunError` if it is not one."""
        folder = Path(folder)
        path = folder / RUN_FILE
        if not path.is_file():
            raise RunError(f"{folder} is not a run folder (no {RUN_FILE})")
        data = json.loads(path.read_text())
        known = {f.name for f in fields(Context)}
        ctx = Context(
            **{k: v for k, v in data["context"].items() if k in known},
            data_path=str(folder / DB_FILE),
        )
        return cls(folder, data["method"], ctx, data["embedded"], data.get("embedded_model"))


def validate_inputs(ctx: Context) -> None:
    """Check prompts and seed files before any server or LLM call."""
    load_prompts(ctx.prompts_dir, ctx.prompts)
    read_seeds("prompts", ctx.seed_prompts_file)
    read_seeds("categories", ctx.seed_categories_file)


def create_run(
    folder: str | Path,
    method: Method,
    ctx: Context,
    *,
    embedded: bool,
    embedded_model: str | None = None,
) -> Run:
    """Create a new run folder (refuses to overwrite an existing run)."""
    folder = Path(folder)
    if (folder / RUN_FILE).exists():
        raise RunError(
            f"{folder} already holds a run; use `data-advisor resume {folder}` "
            "or choose another --run folder"
        )
    validate_inputs(ctx)
    folder.mkdir(parents=True, exist_ok=True)
    ctx.data_path = str(folder / DB_FILE)
    run = Run(folder, method, ctx, embedded, embedded_model)
    run.save()
    return run


@contextmanager
def checkpointer(run: Run) -> Iterator[SqliteSaver]:
    """LangGraph's SQLite checkpointer on the run's file."""
    conn = sqlite3.connect(run.checkpoint_path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL: consistent after a crash, no fsync a step
    try:
        yield SqliteSaver(conn)
    finally:
        conn.close()


@contextmanager
def served(run: Run) -> Iterator[Context]:
    """The run's context, with the embedded server started when the run uses one."""
    if not run.embedded:
        yield run.context
        return
    from tools.server import EmbeddedServer

    server = EmbeddedServer(
        run.embedded_model, log_path=run.folder / SERVER_LOG, max_model_len=4096
    )
    Console(stderr=True).print(f"starting the embedded vLLM server (log: {server.log_path}) ...")
    with server:
        ctx = Context(
            **{**run.context.to_dict(), "base_url": server.base_url, "model": server.model_name}
        )
        yield ctx


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def execute(run: Run, *, resume: bool, show_progress: bool = True) -> State:
    """Run (or resume) the run's graph to its end; return the final state.

    Ctrl-C (or SIGTERM) stops cleanly: the server is stopped, the data written so far is kept,
    and ``resume`` continues from the last completed step.
    """
    console = Console(stderr=True)
    try:
        return _execute(run, resume, show_progress, console)
    finally:
        close_shared(run.db_path)  # the nodes' shared store connection


def _execute(run: Run, resume: bool, show_progress: bool, console: Console) -> State:
    with checkpointer(run) as saver, _sigterm_as_interrupt():
        graph = compile_graph(run.method, saver)
        config = run.config()
        snapshot = graph.get_state(config)
        if resume and not snapshot.values:
            resume = False  # stopped before the first checkpoint: start again
        elif not resume and snapshot.values and snapshot.next:
            raise RunError(f"{run.folder} has already started; use `data-advisor resume`")
        store = shared_store(run.db_path, run.name)
        if resume and not snapshot.next and not snapshot.tasks:
            state = State(**snapshot.values)
            if _done(state, store, run.context):
                console.print(f"run {run.name} is already finished")
                return state
        with served(run) as ctx:
            progress = _progress(console, run, show_progress)
            with progress or nullcontext():
                task = (
                    progress.add_task(
                        "rounds", total=run.context.rounds, kept=0, rejected=0, responses=0, tps=0.0
                    )
                    if progress
                    else None
                )
                started, tokens_before = time.perf_counter(), store.output_tokens()
                state = State(**snapshot.values) if resume else State()
                # Resuming with no input runs the pending step, or applies the writes of a step
                # whose tasks all finished before its checkpoint was saved (then no step shows as
                # pending). If that leaves the run unfinished, nothing was pending: start again
                # from the top; load_seeds steps back an unfinished round (its writes are keyed).
                for inputs in (None, {}) if resume else ({},):
                    for values in graph.stream(
                        inputs, config, context=ctx, stream_mode="values"
                    ):
                        state = State(**values)
                        if progress is not None and task is not None:
                            tokens = store.output_tokens() - tokens_before
                            progress.update(
                                task,
                                completed=max(state.round - 1, 0),  # the round in progress
                                kept=state.kept,
                                rejected=sum(state.rejected.values()),
                                responses=state.responses,
                                tps=tokens / (time.perf_counter() - started),
                            )
                    if _done(State(**graph.get_state(config).values), store, run.context):
                        break
                if progress is not None and task is not None:
                    progress.update(task, completed=state.round)
        final = graph.get_state(config).values
    return State(**final)


def _done(state: State, store: RunStore, ctx: Context) -> bool:
    """The run reached its end: the stopping rule holds and its last round is complete."""
    return run_finished(state, ctx) and not round_unfinished(store, state, ctx)


def _progress(console: Console, run: Run, enabled: bool) -> Progress | None:
    if not enabled:
        return None
    return Progress(
        TextColumn(f"[bold]{run.method}[/] {run.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "kept {task.fields[kept]} rejected {task.fields[rejected]} "
            "answered {task.fields[responses]} | {task.fields[tps]:.1f} tok/s"
        ),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )

