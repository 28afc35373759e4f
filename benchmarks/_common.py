"""Helpers shared by the benchmarks: a request log on the stub server and small table printing.

The stub server (``tools.stub_server.StubServer``) calls its handler once per completion
request, after its fixed latency. :class:`RequestLog` wraps the default handler and records, per
request, when the answer was made and which node asked (recognised by the ending of the last
user message, as the stub itself does). From that sequence :func:`critical_path_calls` counts the
LLM calls that lie one after the other on the critical path: every critic and summarizer call
counts once, a concurrent generator or responder batch counts once as a whole.
"""

from __future__ import annotations

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

from tools.stub_server import (  # noqa: E402
    CATEGORY_MARKER,
    REQUEST_MARKER,
    SUMMARY_MARKER,
    StubServer,
    data_advisor_handler,
    last_user_text,
)

Kind = Literal["critic", "generator", "summarizer", "responder"]
SEQUENTIAL: frozenset[str] = frozenset({"critic", "summarizer"})
"""Kinds whose calls are sent one at a time; the others come as one concurrent batch."""


def request_kind(body: dict[str, Any]) -> Kind:
    """Which node sent a chat request (by the ending of its last user message)."""
    text = last_user_text(body).rstrip()
    if text.endswith(CATEGORY_MARKER):
        return "critic"
    if text.endswith(REQUEST_MARKER):
        return "generator"
    if text.endswith(SUMMARY_MARKER):
        return "summarizer"
    return "responder"


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

    def kinds(self) -> list[Kind]:
        """The kinds of the logged requests, in order."""
        return [kind for _, kind in self.entries]


class ProcessStub:
    """The stub server with a :class:`RequestLog`, in a child process, as a real server would be.

    In the benchmark's own process the stub's request handling would take the GIL from the app
    under test. ``time.perf_counter`` is the system's monotonic clock on Linux, so the child's
    log times compare with the parent's.
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

    def entries(self) -> list[tuple[float, Kind]]:
        """The request log so far."""
        assert self._conn is not None
        self._conn.send("entries")
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
    log = RequestLog()
    with StubServer(handler=log, latency=latency) as stub:
        conn.send(stub.base_url)
        while (command := conn.recv()) != "stop":
            if command == "entries":
                conn.send(list(log.entries))


def batches(kinds: Sequence[str]) -> list[tuple[str, int]]:
    """The LLM calls of a request log as ``(kind, size)``, in the order they were made.

    Each critic or summarizer request is a call of its own; a run of consecutive requests of a
    concurrent kind (generator, responder) is one batch (the graph runs one node at a time, so
    the requests of two batches never interleave).
    """
    out: list[tuple[str, int]] = []
    previous = None
    for kind in kinds:
        if kind in SEQUENTIAL or kind != previous:
            out.append((kind, 1))
        else:
            out[-1] = (kind, out[-1][1] + 1)
        previous = kind
    return out


def critical_path_calls(kinds: Sequence[str]) -> int:
    """Sequential LLM calls: each critic/summarizer call, plus one per batch of the others."""
    return len(batches(kinds))


def split_rounds(entries: Sequence[tuple[float, Kind]], first: Kind,
                 ) -> list[list[tuple[float, Kind]]]:
    """Cut a request log into rounds: a round starts with a ``first`` request after a responder."""
    rounds: list[list[tuple[float, Kind]]] = []
    previous: str | None = None
    for entry in entries:
        if entry[1] == first and previous in (None, "responder"):
            rounds.append([])
        if rounds:
            rounds[-1].append(entry)
        previous = entry[1]
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
