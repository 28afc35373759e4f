"""Helpers shared by the benchmarks: request logs on the stub server and small table printing.

:class:`RequestLog` is a stub handler that records, per request, when it was answered and which
node asked (recognised by the ending of the last user message, as the stub itself does).
:class:`ProcessStub` runs the stub in a child process and logs each request's arrival and last
byte; from those :func:`waves` groups the requests sent together, and
:func:`critical_path_calls` / :func:`server_seconds` count and time the groups that lie one
after the other on the critical path (a concurrent batch, or the summarizer's call beside the
responder's batch, is one group).
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from anywhere, without an install
    sys.path.insert(0, str(ROOT))

from testing.stub_server import (  # noqa: E402
    StubServer,
    data_advisor_handler,
    last_user_text,
    recognise_node,
)

Kind = Literal["critic", "generator", "summarizer", "responder", "judge"]
Call = tuple[float, float, Kind]
"""One completion request as the server saw it: arrived, answered (``perf_counter``), kind."""


_KINDS: dict[str, Kind] = {
    "weakness_critic": "critic",
    "weakness_critic_batch": "critic",
    "generator": "generator",
    "self_instruct_generator": "generator",
    "summarizer": "summarizer",
    "summarizer_batch": "summarizer",
    "summarizer_delta": "summarizer",
    "responder": "responder",
    "prompt_judge": "judge",
}


def request_kind(body: dict[str, Any]) -> Kind:
    """Which node sent a chat request (as the stub recognises it)."""
    return _KINDS[recognise_node(last_user_text(body))]


@dataclass
class RequestLog:
    """A stub handler that answers like the default one and logs ``(time, kind)`` per request."""

    entries: list[tuple[float, Kind]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, body: dict[str, Any]) -> str:
        kind = request_kind(body)
        with self._lock:
            self.entries.append((time.perf_counter(), kind))
        return data_advisor_handler(body)

    def take(self) -> list[tuple[float, Kind]]:
        """Return the entries logged so far and start a new log."""
        with self._lock:
            entries, self.entries = self.entries, []
        return entries


class ProcessStub:
    """The stub server in a child process, as a real server would be, logging every call.

    In the benchmark's own process the stub's request handling would take the GIL from the app
    under test. Each completion request is logged as a :data:`Call`: when its first byte
    arrived, when its last byte was sent, and which node sent it. ``time.perf_counter`` is the
    system's monotonic clock on Linux, so the child's times compare with the parent's.
    """

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self.base_url = ""

    def __enter__(self) -> ProcessStub:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve_stub, args=(child, self.latency), name="stub", daemon=True
        )
        self._process.start()
        self.base_url = self._conn.recv()
        return self

    def calls(self) -> list[Call]:
        """The completion requests served so far, in arrival order."""
        assert self._conn is not None
        self._conn.send("calls")
        return self._conn.recv()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._conn is not None and self._process is not None:
            self._conn.send("stop")
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
            self._conn.close()


def _serve_stub(conn: Connection, latency: float) -> None:
    stub = StubServer(latency=latency)
    calls: list[Call] = []
    inner = stub.app

    async def timed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI wrapper: times each completion request from arrival to its last byte."""
        if scope["type"] != "http" or not scope["path"].endswith("completions"):
            return await inner(scope, receive, send)
        arrived, body = time.perf_counter(), bytearray()

        async def receive_body() -> dict[str, Any]:
            message = await receive()
            body.extend(message.get("body", b""))
            return message

        async def send_timed(message: dict[str, Any]) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                kind = request_kind(json.loads(bytes(body) or b"{}"))
                calls.append((arrived, time.perf_counter(), kind))

        await inner(scope, receive_body, send_timed)

    stub.app = timed  # type: ignore[assignment]
    with stub:
        conn.send(stub.base_url)
        while (command := conn.recv()) != "stop":
            if command == "calls":
                conn.send(sorted(calls))


def waves(calls: Sequence[Call], latency: float) -> list[list[Call]]:
    """The calls grouped into those sent together, in time order.

    With a fixed latency ``L``, requests sent together (a batch, or calls made side by side)
    arrive within a few ms, and a call made after another arrives at least ``L`` later: a new
    group starts with a request arriving more than ``L / 2`` after the group's first.
    """
    groups: list[list[Call]] = []
    for call in sorted(calls):
        if not groups or call[0] - groups[-1][0][0] > latency / 2:
            groups.append([])
        groups[-1].append(call)
    return groups


def critical_path_calls(calls: Sequence[Call], latency: float) -> int:
    """LLM calls one after the other on the critical path: one per group sent together."""
    return len(waves(calls, latency))


def server_seconds(calls: Sequence[Call], latency: float) -> float:
    """The LLM calls' latency on the critical path: per group sent together, the longest time
    one request spent in the server (arrival to last byte: ``L`` plus the stub's handling)."""
    return sum(max(c[1] - c[0] for c in g) for g in waves(calls, latency))


def split_rounds(calls: Sequence[Call], first: Kind) -> list[list[Call]]:
    """Cut a request log into rounds: a round starts with the first ``first`` request of a run
    of them (the critic's retries, or a Self-Instruct generator batch, belong to one round)."""
    rounds: list[list[Call]] = []
    previous: str | None = None
    for call in sorted(calls):
        if call[-1] == first and previous != first:
            rounds.append([])
        if rounds:
            rounds[-1].append(call)
        previous = call[-1]
    return rounds


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table: numeric columns right-aligned, text columns left-aligned."""
    cells = [[str(h) for h in header], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(isinstance(row[i], int | float) for row in rows) and i > 0
               for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if num else c.ljust(w)
                 for c, w, num in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)
