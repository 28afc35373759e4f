"""Running a graph in a run folder: checkpoints, the embedded server, progress, clean stops.

A run folder holds ``run.json`` (method and context, no secrets; a ``history`` of endpoint
changes made on resume), ``run.sqlite`` (the data tables), ``checkpoints.sqlite`` (LangGraph's
checkpoints, thread id = run name) and ``vllm.log`` when the embedded server was used.
:func:`execute` starts a run, or resumes it from its last checkpoint after a crash, Ctrl-C,
``kill`` or a closed terminal, restarting the embedded server if needed. Progress is a rich
bar on a terminal and one plain line per round otherwise (logs, CI, ``nohup``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from langgraph.checkpoint.sqlite import SqliteSaver
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from graph.context import Context
from graph.graph import Method, compile_graph, run_finished
from graph.prompts import load_prompts
from graph.seeds import read_seeds
from graph.state import State
from nodes.load_seeds import round_unfinished
from tools.server import EmbeddedServer, served_name, stop_signals_interrupt
from tools.store import RunStore, close_shared, shared_store

RUN_FILE = "run.json"
DB_FILE = "run.sqlite"
CHECKPOINT_FILE = "checkpoints.sqlite"
SERVER_LOG = "vllm.log"
ENDPOINT_FIELDS = (
    "base_url",
    "model",
    *(f"{role}_{what}" for role in ("advisor", "generator", "responder")
      for what in ("base_url", "model")),
    "api_key_env",
)
"""Context fields that say where the servers are: the only ones ``resume`` may change."""


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
    history: list[dict[str, Any]] = field(default_factory=list)
    """Changes made after the start (``resume`` with new endpoints): time, field, old, new."""

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
        """Write ``run.json`` atomically (a crash mid-write leaves the old file, never half)."""
        ctx = self.context.to_dict()
        ctx.pop("data_path")
        data = {
            "method": self.method,
            "embedded": self.embedded,
            "embedded_model": self.embedded_model,
            "context": ctx,
            "history": self.history,
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{RUN_FILE}.", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(data, indent=2) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.folder / RUN_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def change_endpoints(self, changes: Mapping[str, str]) -> list[dict[str, Any]]:
        """Point the run at servers that moved; record each change in ``history`` and save.

        ``changes`` maps :data:`ENDPOINT_FIELDS` to new values (URLs, served model names, the
        name of the API-key variable; never a key). A ``base_url`` on a run that used the
        embedded server switches it to that server, keeping the served name of its model
        unless ``model`` says otherwise. Returns the entries added (none if nothing changed).
        """
        other = sorted(set(changes) - set(ENDPOINT_FIELDS))
        if other:
            raise RunError(
                f"resume changes only where the servers are, not {', '.join(other)}; "
                "start a new run to change anything else"
            )
        for name, value in changes.items():
            if name.endswith("base_url"):
                check_base_url(value, name)
        if self.embedded and "model" in changes and "base_url" not in changes:
            raise RunError(
                f"this run serves {served_name(self.embedded_model)} with the embedded vLLM "
                "server; --model on resume names the model served at --base-url (give both), "
                "and another model needs a new run"
            )
        entries: list[dict[str, Any]] = []
        if self.embedded and "base_url" in changes:
            entries.append(_change("embedded", True, False))
            entries.append(_change("base_url", None, changes["base_url"]))
            self.embedded = False
            # The embedded server ran with its own port: the old base_url was never used.
            self.context.base_url = changes["base_url"]
            changes = {"model": served_name(self.embedded_model), **changes}
            changes.pop("base_url")
        for name, new in changes.items():
            old = getattr(self.context, name)
            if old != new:
                setattr(self.context, name, new)
                entries.append(_change(name, old, new))
        if entries:
            self.history.extend(entries)
            self.save()
        return entries

    @classmethod
    def load(cls, folder: str | Path) -> Run:
        """Read a run folder; a clear :class:`RunError` if it is not one."""
        folder = Path(folder)
        path = folder / RUN_FILE
        if not path.is_file():
            raise RunError(f"{folder} is not a run folder (no {RUN_FILE})")
        data = json.loads(path.read_text())
        known = {f.name for f in fields(Context)}
        recorded = {k: v for k, v in data["context"].items() if k in known}
        ctx = Context(**recorded, data_path=str(folder / DB_FILE))
        # run.json wins over DATA_ADVISOR_* variables (Context lets them fill fields at their
        # default): a variable left in the shell must not move a run without a record.
        for name, value in recorded.items():
            setattr(ctx, name, value)
        return cls(
            folder,
            data["method"],
            ctx,
            data["embedded"],
            data.get("embedded_model"),
            list(data.get("history") or []),
        )


def _change(name: str, old: Any, new: Any) -> dict[str, Any]:
    """One ``history`` entry of ``run.json``."""
    at = datetime.now(UTC).isoformat(timespec="seconds")
    return {"time": at, "field": name, "old": old, "new": new}


def check_base_url(url: str, option: str = "base_url") -> None:
    """Refuse a base URL that is not ``http(s)://host...`` or that carries a password."""
    flag = "--" + option.replace("_base_url", "_url").replace("_", "-")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RunError(f"{flag} {url!r} is not an http(s) URL; give e.g. http://host:8000/v1")
    if parts.password is not None:
        raise RunError(
            f"{flag} holds a password: put the key in the environment variable named by "
            "--api-key-env, not in the URL (run.json would keep it)"
        )


def validate_inputs(ctx: Context) -> None:
    """Check endpoints, prompts and seed files before any server or LLM call."""
    for name in ENDPOINT_FIELDS:
        value = getattr(ctx, name)
        if name.endswith("base_url") and value:
            check_base_url(value, name)
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
def served(run: Run, progress: bool = True) -> Iterator[Context]:
    """The run's context, with the embedded server started when the run uses one (its
    startup status shown unless ``progress`` is off)."""
    if not run.embedded:
        yield run.context
        return
    server = EmbeddedServer(
        run.embedded_model, log_path=run.folder / SERVER_LOG, max_model_len=4096,
        progress=progress,
    )
    with server:
        ctx = Context(
            **{**run.context.to_dict(), "base_url": server.base_url, "model": server.model_name}
        )
        yield ctx


def execute(run: Run, *, resume: bool, show_progress: bool = True) -> State:
    """Run (or resume) the run's graph to its end; return the final state.

    Ctrl-C, SIGTERM or SIGHUP stop cleanly: the server is stopped, the data written so far is
    kept, and ``resume`` continues from the last completed step.
    """
    console = Console(stderr=True)
    try:
        return _execute(run, resume, show_progress, console)
    finally:
        close_shared(run.db_path)  # the nodes' shared store connection


def _execute(run: Run, resume: bool, show_progress: bool, console: Console) -> State:
    with checkpointer(run) as saver, stop_signals_interrupt():
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
        with served(run, show_progress) as ctx:
            progress = _progress(console, run, show_progress)
            lines = _RoundLines(console, run, store) if show_progress and not progress else None
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
                        if lines is not None:
                            lines.update(state)
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
                if lines is not None:
                    lines.update(State(**graph.get_state(config).values))
        final = graph.get_state(config).values
    return State(**final)


def _done(state: State, store: RunStore, ctx: Context) -> bool:
    """The run reached its end: the stopping rule holds and its last round is complete."""
    return run_finished(state, ctx) and not round_unfinished(store, state, ctx)


def _progress(console: Console, run: Run, enabled: bool) -> Progress | None:
    """The rich progress bar, on a terminal only (elsewhere it would print nothing until the
    end): see :class:`_RoundLines`."""
    if not enabled or not console.is_terminal:
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


class _RoundLines:
    """Progress for logs: one plain line per finished round (stderr is not a terminal)."""

    def __init__(self, console: Console, run: Run, store: RunStore) -> None:
        self.console, self.run, self.store = console, run, store
        self.started = time.perf_counter()
        # On resume the rounds finished before are not reported again.
        finished = [r["round"] for r in store.rounds() if r.get("finished_at")]
        self.last = max(finished, default=0)

    def update(self, state: State) -> None:
        """Print a line for each round that finished since the last call."""
        while self.last < state.round:
            record = self.store.get_round(self.last + 1)
            if not record or not record.get("finished_at"):
                return
            self.last += 1
            self.console.print(
                self.line(record, state), highlight=False, markup=False, soft_wrap=True
            )

    def line(self, record: dict[str, Any], state: State) -> str:
        """``round 3/10 | weakness ... | kept ... | rejected ... | answered ... | elapsed``."""
        ctx = self.run.context
        total = f" ({state.kept}/{ctx.target_size} kept)" if ctx.target_size else f"/{ctx.rounds}"
        weakness = record.get("weakness") or "-"
        if self.run.method != "data_advisor":
            weakness = "(random examples)"
        return (
            f"{self.run.method} {self.run.name}: round {record['round']}{total} | "
            f"weakness {weakness} | kept {record.get('kept') or 0} "
            f"(total {state.kept}) | rejected {sum((record.get('rejected') or {}).values())} | "
            f"answered {record.get('responses') or 0} | "
            f"{time.perf_counter() - self.started:.0f} s"
        )
