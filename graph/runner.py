"""Running a graph in a run folder: checkpoints, the embedded server, progress, clean stops.

A run folder holds ``run.json`` (the run's ``id``, method and context, no secrets; the
content hashes of its decontamination files; a ``history`` of endpoint changes made on
resume), ``run.sqlite`` (the data tables), ``checkpoints.sqlite`` (LangGraph's checkpoints),
``run.lock`` (who executes the run), ``vllm.log`` when the embedded server was used, and
``steering.jsonl`` when the run is steered by a trained model's failures (from which round
which result files applied, :func:`note_steering`). The
id, ``<method>-<12 hex digits>``, is made when the run is created and is its checkpoint thread
id and its key in ``run.sqlite``: a folder moved or renamed is the same run (runs made before
ids were recorded use their folder name).

:func:`execute` starts a run, or resumes it from its last checkpoint after a crash, Ctrl-C,
``kill`` or a closed terminal, restarting the embedded server if needed. It holds the folder's
lock (a second process is refused, saying who holds it). Progress is a rich bar on a terminal
and one plain line per round otherwise (logs, CI, ``nohup``). :func:`storage_error` turns a
corrupt, unreadable or unwritable file or a full disk into one line naming the file.

Where a run stands
------------------
:func:`phase_of` is the one answer, used by ``execute``, ``status`` and the experiment
(:func:`run_phase` reads it from a run folder): ``not started`` (no checkpoint),
``finished`` (the checkpoint has no pending step, the stopping rule ``graph.state.run_finished``
holds and its last round is complete in the store), else ``in progress``, with the round and
what a resume runs next. A round is complete when every node its record names has recorded
its timing: opening a round writes the nodes it needs (``graph.graph.round_nodes``; records
from before that use ``graph.state.LEGACY_ROUND_NODES``). The store, not the checkpoint, has
the last word on a round: a checkpoint at its end whose last round lacks a node is in progress.

The resume protocol
-------------------
Every node writes its rows to the store before LangGraph saves its step's checkpoint, and
every write is keyed (round, slot), so running a step again replaces its rows: it neither
loses nor duplicates them. A resume (``execute(run, resume=True)``):

1. checks that the store and the checkpoint agree (:func:`check_consistent`): the store may
   be ahead by the checkpoint's round (writes of a step whose checkpoint was not saved, or a
   round stepped back), never behind it and never by more; otherwise it stops, saying what
   to restore;
2. stops at once when the run is ``finished``; a run ``not started`` starts from the top;
3. runs the pending step(s) of the checkpoint, if any (LangGraph re-runs only the tasks of
   that step that did not save their writes, and applies the writes of those that did);
4. if the run is still not finished, nothing is pending (a step ran, its writes are in the
   store, its checkpoint is not): it starts again from the top. ``load_seeds`` then steps back
   a round the checkpoint shows open but the store does not show complete (the state's round
   goes one back and its counters are recomputed from the store's earlier rounds), and the
   round's first node opens that round again.

A round's generator fans out into W tasks (one ``Send`` each, ``graph.graph``); each task writes
its own slots of the round (``index * K ...``) and records its own timing (``generator[i]``), so
a kill in the middle of a fan-out leaves the tasks that finished applied (step 3: LangGraph
saved their writes) and the others to run; when the fan-out's checkpoint was not saved at all,
step 4 runs the round again, and each task replaces its own rows. A resume killed at any point
is resumed the same way: each step above reads only the checkpoint and the store.
``nodes/load_seeds.py``, ``graph/state.py`` and ``graph/graph.py`` refer to this protocol
instead of repeating it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import StateSnapshot
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from graph.context import ROLES, STUDIO_FILE, Context, ContextError
from graph.graph import Method, checkpoint_serializer, compile_graph
from graph.seeds import read_seeds
from graph.state import State, is_legacy, round_unfinished, run_finished, state_of
from graph.templates import load_templates
from nodes.responder import forget_backlog
from tools.decontam import file_digests, read_prompts
from tools.files import append_jsonl, read_jsonl, write_atomic
from tools.server import EmbeddedServer, served_name, stop_signals_interrupt
from tools.steering import read_failures, steering_digests
from tools.store import (
    DB_FILE,
    RUN_FILE,
    RunStore,
    close_shared,
    run_id_from,
    shared_store,
)
from tools.taxonomy import load_taxonomy

CHECKPOINT_FILE = "checkpoints.sqlite"
LOCK_FILE = "run.lock"
SERVER_LOG = "vllm.log"
ENDPOINT_FIELDS = (
    "base_url",
    "model",
    *(f"{role}_{what}" for role in ROLES for what in ("base_url", "model")),
    "api_key_env",
)
WAIT_FIELDS = ("request_timeout", "max_retries", "node_timeout")
"""How long a run waits for its servers; like the endpoints, ``resume`` may change them."""
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
    run_id: str = ""
    """The run's id: its LangGraph thread id and its key in ``run.sqlite`` (default: the
    folder name, as for runs made before ``run.json`` recorded an id)."""
    id_recorded: bool = field(default=True, compare=False)
    """False for a ``run.json`` without an id (written on the next start or resume)."""
    unrecorded: frozenset[str] = field(default=frozenset(), compare=False)
    """Context fields ``run.json`` does not hold (the run was made before they existed): the
    loaded context has today's defaults for them, which that run may not have used."""
    decontamination: dict[str, str] = field(default_factory=dict)
    """``{file: sha256}`` of the context's ``decontaminate`` files when the run was created: a
    resume against other contents is refused (:func:`check_recorded_inputs`)."""
    taxonomy_sha256: str | None = None
    """With a judge: the SHA-256 of the taxonomy's categories (:attr:`Taxonomy.sha256`) when
    the run was created; a resume on another taxonomy is refused (None: no judge, or a run
    made before it was recorded)."""

    def __post_init__(self) -> None:
        self.run_id = self.run_id or self.folder.name

    @property
    def name(self) -> str:
        """The run's name as shown: its folder name (the id is :attr:`run_id`)."""
        return self.folder.name

    @property
    def is_studio(self) -> bool:
        """True for a Studio thread's run folder (its checkpoints are the LangGraph server's)."""
        return (self.folder / STUDIO_FILE).is_file()

    @property
    def db_path(self) -> Path:
        """The run's SQLite file."""
        return self.folder / DB_FILE

    @property
    def checkpoint_path(self) -> Path:
        """LangGraph's checkpoint file."""
        return self.folder / CHECKPOINT_FILE

    def config(self, recursion_limit: int | None = None) -> RunnableConfig:
        """LangGraph config of the run's thread. Its ``max_concurrency`` (the context's) bounds
        the tasks a superstep runs at once: W generator tasks of one request each (K = 1) send
        it from their own threads, beside the shared pool that bounds larger batches."""
        limit = recursion_limit or 8 * self.context.rounds + 16
        return {"configurable": {"thread_id": self.run_id}, "recursion_limit": limit,
                "max_concurrency": self.context.max_concurrency}

    def save(self, *, replace: bool = True) -> None:
        """Write ``run.json`` atomically (a crash mid-write leaves the old file, never half);
        ``replace=False`` refuses to replace one (:class:`FileExistsError`)."""
        ctx = self.context.to_dict()
        ctx.pop("data_path")
        data = {
            "id": self.run_id,
            "method": self.method,
            "embedded": self.embedded,
            "embedded_model": self.embedded_model,
            "context": ctx,
            "decontamination": self.decontamination,
            **({"taxonomy_sha256": self.taxonomy_sha256} if self.taxonomy_sha256 else {}),
            "history": self.history,
        }
        write_atomic(self.folder / RUN_FILE, json.dumps(data, indent=2) + "\n", replace=replace)
        self.id_recorded = True

    def change_endpoints(self, changes: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Point the run at servers that moved; record each change in ``history`` and save.

        ``changes`` maps :data:`ENDPOINT_FIELDS` to new values (URLs, served model names, the
        name of the API-key variable; never a key), or :data:`WAIT_FIELDS` (timeouts,
        retries). A ``base_url`` on a run that used the embedded server switches it to that
        server, keeping the served name of its model unless ``model`` says otherwise. Returns
        the entries added (none if nothing changed).
        """
        other = sorted(set(changes) - set(ENDPOINT_FIELDS) - set(WAIT_FIELDS))
        if other:
            raise RunError(
                f"resume changes only where the servers are and how long to wait for them, "
                f"not {', '.join(other)}; "
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
        check_roles(self.context, self.embedded, self.embedded_model)
        if entries:
            self.history.extend(entries)
            self.save()
        return entries

    @classmethod
    def load(cls, folder: str | Path) -> Run:
        """Read a run folder; a clear :class:`RunError` if it is not one."""
        folder = Path(folder)
        data = _read_run_file(folder)
        known = {f.name for f in fields(Context)}
        recorded = {k: v for k, v in data["context"].items() if k in known}
        try:  # run.json, not DATA_ADVISOR_* variables: they must not move a run unrecorded
            ctx = Context.from_record({**recorded, "data_path": str(folder / DB_FILE)})
        except ContextError as exc:
            raise RunError(f"{folder / RUN_FILE}: {exc}; fix the value in the file") from None
        return cls(
            folder,
            data["method"],
            ctx,
            data["embedded"],
            data.get("embedded_model"),
            list(data.get("history") or []),
            run_id_from(data, folder),
            id_recorded=bool(data.get("id")),
            unrecorded=frozenset(known - set(recorded) - {"data_path"}),
            decontamination=dict(data.get("decontamination") or {}),
            taxonomy_sha256=data.get("taxonomy_sha256"),
        )


def new_run_id(method: str) -> str:
    """A new run's id: ``<method>-<12 hex digits>`` (unique, and it says what the run is)."""
    return f"{method}-{uuid.uuid4().hex[:12]}"


def _read_run_file(folder: Path) -> dict[str, Any]:
    """``run.json``'s content; a :class:`RunError` saying what to do when it is missing or cut."""
    path = folder / RUN_FILE
    if not path.is_file():
        raise RunError(f"{folder} is not a run folder (no {RUN_FILE})")
    try:
        data = json.loads(path.read_text("utf-8"))
    except ValueError as exc:  # empty or cut: a crash while an older version wrote it
        raise RunError(
            f"{path} is empty or not valid JSON ({exc}), as a crash while writing it leaves it: "
            f"restore it from a backup; if the folder holds no data yet, start the run again "
            f"with `data-advisor run --run {folder}`"
        ) from None
    if not isinstance(data, dict) or not {"method", "context", "embedded"} <= set(data):
        raise RunError(f"{path} is not a run.json of data-advisor; restore it from a backup")
    return data


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
    """Check endpoints, templates and seed files before any server or LLM call."""
    for name in ENDPOINT_FIELDS:
        value = getattr(ctx, name)
        if name.endswith("base_url") and value:
            check_base_url(value, name)
    load_templates(ctx.prompts_dir, ctx.prompts)
    read_seeds("prompts", ctx.seed_prompts_file)
    read_seeds("categories", ctx.seed_categories_file)
    for path in ctx.decontaminate:  # a DecontaminationError saying what to give instead
        read_prompts(path)
    if ctx.steer_from:  # a SteeringError saying what is wrong with a result file
        read_failures(ctx.steer_from)
    load_taxonomy(ctx.taxonomy)  # a TaxonomyError saying what the file must hold


def check_roles(ctx: Context, embedded: bool, embedded_model: str | None) -> None:
    """Refuse role settings that would send a role's requests to the wrong model: on the
    embedded server (it serves one model) a role's model without that role's URL, and a Llama
    Guard 3 judge without an endpoint of its own (it would be the generation model)."""
    for role in ROLES:
        model = getattr(ctx, f"{role}_model")
        if (embedded and model is not None and getattr(ctx, f"{role}_base_url") is None
                and model != served_name(embedded_model)):
            raise RunError(
                f"--{role}-model {model} is not served by the embedded vLLM server (it serves "
                f"only {served_name(embedded_model)}); give --{role}-url of a server serving "
                f"it, or leave --{role}-model out"
            )
    if ctx.judge == "llamaguard3" and ctx.judge_base_url is None and ctx.judge_model is None:
        raise RunError(
            "--judge llamaguard3 needs Llama Guard 3 served by a server of its own: give "
            "--judge-url (and --judge-model, its served name); without them the judge would "
            "be the generation model"
        )


STEERING_FILE = "steering.jsonl"
"""In a run folder: one line per change of the results a run is steered by (``from_round``,
``files``: path -> sha256), so the rounds each steering applied to are known."""


def note_steering(run: Run, next_round: int) -> None:
    """Append the run's ``steer_from`` files to its :data:`STEERING_FILE` when they differ
    from the last line (a new iteration of an experiment steers from new results)."""
    path = run.folder / STEERING_FILE
    lines = read_jsonl(path)
    files = steering_digests(run.context.steer_from)
    if (lines[-1].get("files") if lines else {}) != files:
        with append_jsonl(path) as write:
            write({"from_round": next_round, "files": files})


def check_recorded_inputs(run: Run) -> None:
    """Refuse to go on when a decontamination file's content, or the judge's taxonomy, differs
    from the one the run started with (their sha256 in run.json): the prompts kept so far were
    checked against the one and labelled in the other."""
    current = file_digests(run.context.decontaminate)
    changed = [path for path, digest in run.decontamination.items()
               if current.get(path) != digest]
    if changed:
        raise RunError(
            f"decontamination file(s) {', '.join(changed)} changed since the run started "
            f"(content hash recorded in {run.folder / RUN_FILE}); restore them, or start a new "
            "run to check against the new contents"
        )
    if run.taxonomy_sha256 and load_taxonomy(run.context.taxonomy).sha256 != run.taxonomy_sha256:
        raise RunError(
            f"taxonomy {run.context.taxonomy or 'llamaguard3 (shipped)'} has other categories "
            f"than when the run started (hash recorded in {run.folder / RUN_FILE}): its kept "
            "prompts were labelled in the old one; restore it, or start a new run"
        )


def create_run(
    folder: str | Path,
    method: Method,
    ctx: Context,
    *,
    embedded: bool,
    embedded_model: str | None = None,
) -> Run:
    """Create a new run folder with a new id (refuses to overwrite an existing run).

    A ``run.json`` left empty or cut by a crash is replaced when the folder holds no data yet
    (no round in ``run.sqlite``, no checkpoint); a folder holding data without a ``run.json``
    is refused (the data belongs to another run).
    """
    folder = Path(folder)
    taken = "choose another --run folder"
    if (folder / RUN_FILE).exists():
        try:
            _read_run_file(folder)
        except RunError as exc:
            if _holds_data(folder):
                raise RunError(f"{exc}; {folder} holds data, so it is not started again: "
                               f"{taken}") from None
        else:
            raise RunError(
                f"{folder} already holds a run; use `data-advisor resume {folder}` or {taken}"
            )
    elif _holds_data(folder):
        raise RunError(
            f"{folder} holds the data of a run ({DB_FILE}, {CHECKPOINT_FILE}) but no "
            f"{RUN_FILE}; restore its {RUN_FILE} from a backup, or {taken}"
        )
    validate_inputs(ctx)
    check_roles(ctx, embedded, embedded_model)
    folder.mkdir(parents=True, exist_ok=True)
    ctx.data_path = str(folder / DB_FILE)
    run = Run(folder, method, ctx, embedded, embedded_model, run_id=new_run_id(method),
              decontamination=file_digests(ctx.decontaminate),
              taxonomy_sha256=load_taxonomy(ctx.taxonomy).sha256 if ctx.judge else None)
    try:
        run.save(replace=(folder / RUN_FILE).exists())  # a cut run.json is replaced
    except FileExistsError:  # another process created the run just now
        raise RunError(
            f"{folder} already holds a run; use `data-advisor resume {folder}` or {taken}"
        ) from None
    return run


def _holds_data(folder: Path) -> bool:
    """True when the folder's SQLite files hold a round or a checkpoint (or cannot be read)."""
    for name, table in ((DB_FILE, "rounds"), (CHECKPOINT_FILE, "checkpoints")):
        path = folder / name
        if not path.is_file():
            continue
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                known = conn.execute(
                    "select 1 from sqlite_master where type = 'table' and name = ?", [table]
                ).fetchone()
                if known and conn.execute(f"select 1 from {table} limit 1").fetchone():
                    return True
        except sqlite3.Error:
            return True  # unreadable: treat as data, never overwrite it
    return False


@contextmanager
def checkpointer(run: Run) -> Iterator[SqliteSaver]:
    """LangGraph's SQLite checkpointer on the run's file."""
    conn = sqlite3.connect(run.checkpoint_path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL: consistent after a crash, no fsync a step
    try:
        yield SqliteSaver(conn, serde=checkpoint_serializer())
    finally:
        conn.close()


def checkpoint_snapshot(run: Run) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The checkpoint's state values and pending steps (:func:`pending_steps`); nothing when
    no checkpoint file exists: reading one never creates it."""
    if not run.checkpoint_path.is_file():
        return {}, ()
    with checkpointer(run) as saver:
        snapshot = compile_graph(run.method, saver).get_state(run.config())
    return dict(snapshot.values or {}), pending_steps(snapshot)


def pending_steps(snapshot: StateSnapshot) -> tuple[str, ...]:
    """The nodes of the checkpoint's pending step: its tasks, also those that saved their
    writes before the step's checkpoint was saved (LangGraph's ``next`` leaves those out, and
    lists nothing when all of them did; a resume applies their writes without running them)."""
    return tuple(task.name for task in snapshot.tasks)


PhaseName = Literal["not started", "in progress", "finished"]


@dataclass(frozen=True)
class Phase:
    """Where a run stands (:func:`phase_of`; "Where a run stands" above)."""

    name: PhaseName
    round: int
    """In progress: the round being run (the checkpoint's round when the store does not show
    it complete or the stopping rule holds, else the next one); finished: the last round; not
    started: 0."""
    next: tuple[str, ...]
    """What a resume runs next: the checkpoint's pending step (:func:`pending_steps`; tasks
    that saved their writes are applied, not run again), else ``load_seeds`` (a start from the
    top, which steps back an unfinished round); nothing once finished."""
    pending: bool
    """True when the checkpoint has pending steps (a resume runs them first)."""
    state: State = field(compare=False, repr=False)
    """The checkpoint's state (the default state before the first checkpoint)."""


def phase_of(
    values: Mapping[str, Any], next_nodes: Sequence[str], store: RunStore, ctx: Context
) -> Phase:
    """Where a run stands, from its checkpoint (state ``values`` and pending ``next_nodes``)
    and its store: the one definition the runner, ``status`` and the experiment use."""
    state = state_of(values)
    if not values:
        return Phase("not started", 0, ("load_seeds",), False, state)
    unfinished = round_unfinished(store, state, ctx)
    stop = run_finished(state, ctx)
    if is_legacy(values):  # its pending step is the old graph's: start from the top instead
        next_nodes = ()
    if not next_nodes and not unfinished and stop:
        return Phase("finished", state.round, (), False, state)
    at = state.round if unfinished or stop else state.round + 1
    pending = tuple(next_nodes)
    return Phase("in progress", at, pending or ("load_seeds",), bool(pending), state)


def run_phase(run: Run, store: RunStore | None = None) -> Phase:
    """Where the run in ``run``'s folder stands (:func:`phase_of`), once its store and
    checkpoint are found to agree (:func:`check_consistent`); ``store`` is its open store, if
    the caller has one. A Studio thread's folder is refused: its checkpoints are not here."""
    check_not_studio(run)
    values, next_nodes = checkpoint_snapshot(run)
    with nullcontext(store) if store is not None else RunStore(run.db_path, run.run_id) as opened:
        check_consistent(run, values, opened)
        return phase_of(values, next_nodes, opened, run.context)


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

    Ctrl-C, SIGTERM or SIGHUP stop cleanly: the server is stopped and the data written so far
    is kept. A resume follows the resume protocol of this module's docstring. The run folder is
    locked meanwhile (:func:`run_lock`).
    """
    check_not_studio(run)
    console = Console(stderr=True)
    with run_lock(run):
        try:
            return _execute(run, resume, show_progress, console)
        finally:
            close_shared(run.db_path)  # the nodes' shared store connection


def check_not_studio(run: Run) -> None:
    """Refuse to execute a Studio thread's run folder (the LangGraph server has its state)."""
    if run.is_studio:
        raise RunError(
            f"{run.folder} is a Studio thread's run folder (its checkpoints are kept by the "
            "LangGraph server); continue it in Studio"
        )


_HELD: dict[str, int] = {}
"""Run folders this process holds the lock of, with how many holders (the lock nests)."""


@contextmanager
def run_lock(run: Run) -> Iterator[None]:
    """Hold the run folder exclusively: a second process executing the run is refused at once,
    saying who holds it. ``flock`` ends with its process, so a killed run's lock is free. It
    nests within one process (``resume`` holds it while it records new endpoints)."""
    key = os.path.realpath(run.folder)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    fd = os.open(run.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(_held_by(run.folder, fd)) from None
        since = datetime.now(UTC).isoformat(timespec="seconds")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        os.ftruncate(fd, 0)  # a dead holder's line is replaced
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
        os.ftruncate(fd, 0)  # nobody holds it now
    finally:
        os.close(fd)  # releases the lock


def lock_holder(folder: Path) -> str | None:
    """Who executes the run in ``folder`` now (``pid N on HOST since T``), or None."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    else:
        return None
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {data['pid']} on {data['host']} since {data['since']}"
    except (ValueError, KeyError, TypeError):  # the holder is still writing its line
        return "another process"


def _held_by(folder: Path, fd: int) -> str:
    holder = _holder(fd)
    stop = f" (`kill {holder.split()[1]}` stops it cleanly)" if holder.startswith("pid") else ""
    return f"{folder} is being executed by {holder}; wait or stop it{stop}"


def check_consistent(run: Run, values: Mapping[str, Any], store: RunStore) -> None:
    """Refuse a store and a checkpoint that disagree (a file restored, emptied or truncated).

    The checkpoint's round and kept count (``values``) are compared with the store's finished
    rounds and rows per round. The store may be ahead of the checkpoint by the checkpoint's
    round (its nodes write before their checkpoint is saved, and a round whose last step has no
    checkpoint runs again), never behind it: every round before it finished, and no fewer
    rows than the checkpoint counts. A round the store finished beyond the checkpoint's means
    the checkpoints were lost, unless it is the next one and some of its nodes did not finish:
    that round was stepped back to run again.
    """
    at, kept = int(values.get("round") or 0), int(values.get("kept") or 0)
    records = {r["round"]: r for r in store.rounds()}
    rows = store.kept_per_round()
    if not values and not records and not rows:
        _check_run_id(run, store)
        return
    done = sorted(r for r, rec in records.items() if rec.get("finished_at"))
    beyond = [r for r in done if r > at]
    if beyond == [at + 1] and round_unfinished(store, State(round=at + 1), run.context):
        beyond = []  # a round stepped back to run again (``load_seeds``), not lost checkpoints
    if beyond or max(records, default=0) > at + 1:
        raise RunError(
            f"{run.checkpoint_path} is at round {at} ({kept} prompts kept) but {run.db_path} "
            f"holds {sum(rows.values())} prompts of {len(done)} finished rounds "
            f"({_span(done)}): the checkpoints were emptied or replaced, and going on would "
            f"write over those rounds; restore {CHECKPOINT_FILE} from a backup, or export the "
            f"data as it is (`data-advisor export {run.folder}`) and start a new run"
        )
    missing = [r for r in range(1, at) if r not in done]
    short = [r for r in done if rows.get(r, 0) != (records[r].get("kept") or 0)]
    stored = sum(n for r, n in rows.items() if r <= at)
    if missing or short or kept > stored:
        detail = f"; not finished in it: round(s) {_span(missing)}" if missing else ""
        if short:
            detail += f"; fewer rows than their records say: round(s) {_span(short)}"
        raise RunError(
            f"{run.db_path} holds {stored} prompts for rounds {_span(range(1, at + 1))} but "
            f"the checkpoint has {kept}{detail}: {DB_FILE} was truncated or replaced by an "
            f"older copy, and going on would leave those prompts out; restore {DB_FILE} from "
            "a backup, or start a new run"
        )


def _check_run_id(run: Run, store: RunStore) -> None:
    """Refuse a run whose id has no data while the store holds other runs' (a renamed folder
    of a run made before ids, or a run.json of another run)."""
    others = [i for i in store.run_ids() if i != run.run_id]
    if not others:
        return
    named = ", ".join(others)
    if run.id_recorded:
        raise RunError(
            f"{run.db_path} holds the data of run(s) {named} but none of {run.run_id}, the id "
            f"in {run.folder / RUN_FILE}: that run.json belongs to another run; restore this "
            "folder's own run.json"
        )
    raise RunError(
        f"{run.db_path} holds the data of run(s) {named} but none of {run.run_id}: this run was "
        f"made before run ids were recorded, so it is keyed by its folder name, and the folder "
        f"was renamed; rename it back to {others[0]}, or add \"id\": \"{others[0]}\" to "
        f"{run.folder / RUN_FILE}"
    )


def _span(rounds: Iterable[int]) -> str:
    """``1-3`` for consecutive rounds, ``1, 3`` otherwise, ``none`` for none."""
    rounds = sorted(rounds)
    if not rounds:
        return "none"
    if rounds == list(range(rounds[0], rounds[-1] + 1)) and len(rounds) > 1:
        return f"{rounds[0]}-{rounds[-1]}"
    return ", ".join(map(str, rounds))


def _execute(run: Run, resume: bool, show_progress: bool, console: Console) -> State:
    with checkpointer(run) as saver, stop_signals_interrupt():
        graph = compile_graph(run.method, saver)
        config = run.config()
        store = shared_store(run.db_path, run.run_id)

        def phase() -> Phase:
            snapshot = graph.get_state(config)
            return phase_of(snapshot.values, pending_steps(snapshot), store, run.context)

        check_consistent(run, graph.get_state(config).values, store)
        check_recorded_inputs(run)
        forget_backlog(run.run_id)  # an interrupted execution's hand-offs: answered at the end
        if run.context.steer_from:  # read now: a bad result file fails before any call
            read_failures(run.context.steer_from)
        if not run.id_recorded:  # a run made before ids: its folder name is its id from now on
            run.save()
        start = phase()
        if run.context.steer_from or (run.folder / STEERING_FILE).exists():
            note_steering(run, start.state.round + 1)
        if not resume and start.pending:
            raise RunError(f"{run.folder} has already started; use `data-advisor resume`")
        if resume and start.name == "finished":
            console.print(f"run {run.name} is already finished")
            return start.state
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
                state = start.state if resume else State()
                # The resume protocol (module docstring): the pending step(s) first (input
                # None); if that leaves the run unfinished, or nothing was pending, a start
                # from the top (input {}: load_seeds steps back an unfinished round).
                inputs: dict[str, Any] | None = None if start.pending else {}
                while True:
                    for values in graph.stream(
                        # LangGraph types the input as the state class; a dict of fields (here
                        # none: start from the top) is what it takes for a dataclass state
                        inputs,  # type: ignore[arg-type]
                        config,
                        context=ctx,
                        stream_mode="values",
                    ):
                        state = state_of(values)
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
                    if inputs is not None or phase().name == "finished":
                        break
                    inputs = {}
                if progress is not None and task is not None:
                    progress.update(task, completed=state.round)
                if lines is not None:
                    lines.update(state_of(graph.get_state(config).values))
        final = graph.get_state(config).values
    return state_of(final)


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
        named = record.get("weaknesses") or []
        weaknesses = "; ".join(named) or "-"
        if self.run.method != "data_advisor":
            weaknesses = "(random examples)"
        label = "weaknesses" if len(named) > 1 else "weakness"
        return (
            f"{self.run.method} {self.run.name}: round {record['round']}{total} | "
            f"{label} {weaknesses} | kept {record.get('kept') or 0} "
            f"(total {state.kept}) | rejected {sum((record.get('rejected') or {}).values())} | "
            f"answered {record.get('responses') or 0} | "
            f"{time.perf_counter() - self.started:.0f} s"
        )


# --- storage failures as one line --------------------------------------------------------------

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_BAD_PATH = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST)
_CORRUPT = ("not a database", "malformed", "corrupt", "disk I/O error", "encrypted")
"""Words of SQLite's messages for a file that is damaged or not a database."""


def storage_error(
    exc: BaseException, paths: Sequence[Path] = (), *, resume: Path | None = None
) -> str | None:
    """One line for a storage failure (the file, what went wrong, what to do), or None when
    ``exc`` is not one. ``paths`` are where to look for a corrupt SQLite file (the command's
    folders and files); ``resume`` is the run folder to resume once the cause is fixed.

    SQLite keeps its files consistent through all of these (a failed write is rolled back), so
    the data written before stays as it was.
    """
    then = "; the data written so far is kept"
    if resume:
        then += f": then `data-advisor resume {resume}`"
    if isinstance(exc, sqlite3.DatabaseError):
        text = str(getattr(exc, "error", exc))
        path = getattr(exc, "path", None)
        files = str(path) if path else _sqlite_files(paths) or "a SQLite file"
        folders = ", ".join(str(p) for p in paths if p.is_dir())
        where = files if path or not folders else f"in {folders}"
        if "full" in text:
            return f"no space left to write {where} ({text}): free some disk space{then}"
        if "unable to open" in text:
            return (f"cannot open {where} ({text}): check that the file and its folder exist "
                    "and are readable and writable")
        if "readonly" in text or "read-only" in text:
            return (f"cannot write {where} ({text}): make the folder writable (or copy the run "
                    "folder somewhere writable and use the copy)")
        if "locked" in text:
            return f"{files} is locked by another process ({text}): wait for it to finish"
        if any(word in text for word in _CORRUPT):
            bad = path or _bad_sqlite(paths) or files
            return (f"{bad} is not a readable SQLite database ({text}): it is corrupt or was "
                    "overwritten; restore it from a backup (the run's other files are untouched)")
        return None  # anything else is a bug: its traceback helps
    if not isinstance(exc, OSError):
        return None
    name = exc.filename or next(iter(paths), None) or "a file"
    if exc.errno in _NO_SPACE:
        return f"no space left to write {name} ({exc.strerror}): free some disk space{then}"
    if exc.errno in _NOT_WRITABLE:
        return (f"cannot write {name} ({exc.strerror}): make it writable, or choose a folder "
                "you can write to")
    if exc.errno in _BAD_PATH:
        return f"cannot write {name} ({exc.strerror}): choose another path"
    return None


def _sqlite_files(paths: Iterable[Path]) -> str:
    return ", ".join(map(str, _candidates(paths)))


def _candidates(paths: Iterable[Path]) -> list[Path]:
    """The SQLite files among ``paths`` and in the folders among them."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += [path / n for n in (DB_FILE, CHECKPOINT_FILE) if (path / n).is_file()]
        elif path.suffix in (".sqlite", ".db") and path.is_file():
            found.append(path)
    return found


def _bad_sqlite(paths: Iterable[Path]) -> Path | None:
    """The first of the candidate SQLite files that is not a sound database."""
    for path in _candidates(paths):
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                if conn.execute("pragma quick_check").fetchone()[0] != "ok":
                    return path
        except sqlite3.DatabaseError:
            return path
    return None
