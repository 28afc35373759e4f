"""(b) Growth over a long run: SQLite bytes per round, checkpoint size, time and memory.

A Data Advisor run folder is created as the CLI does (``graph.runner.create_run``) and its graph
is streamed (``stream_mode="updates"``) with the runner's SQLite checkpointer and recursion
limit against the loopback stub server with no latency. Each time the rule check closes a round,
the benchmark samples:

- the bytes in use in ``run.sqlite`` and ``checkpoints.sqlite`` (``(page_count -
  freelist_count) * page_size``, read through SQLite, so pages still in a ``-wal`` file count
  and WAL checkpoints do not make steps) and, for reference, the files' sizes on disk (main
  file + ``-wal``; the checkpointer's WAL grows to ~4 MB and is then reused, so the on-disk
  figure moves in steps);
- the checkpoint rows written during the round (``checkpoints.checkpoint`` + ``metadata`` blobs,
  and ``writes.value`` blobs), and the size of the latest checkpoint blob;
- the round's wall time, its critic calls, Python heap (``tracemalloc``) and ``ru_maxrss``.

It prints the bytes added per round at the end over those at the start (mean over the last
50 rounds / mean over the first 50; target <= 1.2), per file, with the checkpoint blob bytes and
round times early vs late, and the peak memory. ``max_summary_lines`` stays at its default.

    python benchmarks/bench_growth.py --rounds 1000 -k 10
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _common import RequestLog, table

from graph.context import Context
from graph.graph import compile_graph
from graph.runner import Run, checkpointer, create_run
from testing.stub_server import StubServer, reset_request_counter
from tools.store import RunStore

WINDOW = 50
"""Rounds averaged at the start and at the end."""


@dataclass
class Sample:
    """What was measured when one round closed."""

    round: int
    seconds: float
    cpu_seconds: float
    """CPU time of the whole process (app and stub) during the round: less moved by other
    load on the machine than the wall time."""
    run_bytes: int
    checkpoint_bytes: int
    disk_bytes: int
    checkpoint_blob_bytes: int
    """``checkpoint`` + ``metadata`` bytes of the checkpoints written during the round."""
    writes_bytes: int
    """``writes.value`` bytes written during the round."""
    checkpoints: int
    last_checkpoint_bytes: int
    critic_calls: int
    heap_bytes: int


@dataclass
class GrowthResult:
    """All samples of one long run, plus its totals."""

    rounds: int
    k: int
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    start: dict[str, int] = field(default_factory=dict)
    """Sizes (``run_bytes``, ``checkpoint_bytes``, ``disk_bytes``) before the first round."""
    heap_peak: int | None = None
    maxrss_kib: int = 0
    kept: int = 0
    loadavg: tuple[float, float] = (0.0, 0.0)
    """1-minute load average before and after (other work on the machine skews the times)."""
    node_seconds: list[dict[str, float]] = field(default_factory=list)
    """Per round, the nodes' wall times from the round records (``timings``)."""

    def bounds(self, end: bool) -> tuple[int, int]:
        """Sample indices of the first or the last ``WINDOW`` rounds (half a shorter run)."""
        n = max(1, min(WINDOW, len(self.samples) // 2))
        return (len(self.samples) - n, len(self.samples)) if end else (0, n)

    def window(self, end: bool) -> list[Sample]:
        """The samples of the first or the last window."""
        lo, hi = self.bounds(end)
        return self.samples[lo:hi]

    def added(self, attr: str, end: bool) -> float:
        """Mean bytes added per round in a window, for a cumulative size attribute."""
        lo, hi = self.bounds(end)
        before = getattr(self.samples[lo - 1], attr) if lo else self.start.get(attr, 0)
        return (getattr(self.samples[hi - 1], attr) - before) / (hi - lo)

    def mean(self, attr: str, end: bool) -> float:
        """Mean of a per-round attribute in a window."""
        return statistics.fmean(getattr(s, attr) for s in self.window(end))

    @property
    def total_ratio(self) -> float:
        """Bytes added per round (both files) at the end over at the start."""
        start = self.added("run_bytes", False) + self.added("checkpoint_bytes", False)
        end = self.added("run_bytes", True) + self.added("checkpoint_bytes", True)
        return end / start


def bytes_in_use(path: Path, conn: sqlite3.Connection | None = None) -> int:
    """Bytes of the pages a SQLite database uses (WAL content included, free pages excluded)."""
    own = conn is None
    conn = conn or sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        if own:
            conn.close()
    return (pages - free) * size


def disk_bytes(*paths: Path) -> int:
    """Sizes on disk of the files and their ``-wal`` files."""
    total = 0
    for path in paths:
        for candidate in (path, path.with_name(path.name + "-wal")):
            if candidate.exists():
                total += candidate.stat().st_size
    return total


class CheckpointRows:
    """Bytes of the checkpointer's rows written since the last call (by rowid)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.last = {"checkpoints": 0, "writes": 0}

    def new(self) -> tuple[int, int, int, int]:
        """Checkpoint blob bytes, writes bytes, checkpoint count, bytes of the latest one."""
        blob, count, latest = self.conn.execute(
            "select coalesce(sum(length(checkpoint) + length(metadata)), 0), count(*), max(rowid)"
            " from checkpoints where rowid > ?", [self.last["checkpoints"]]).fetchone()
        last_bytes = 0
        if latest is not None:
            last_bytes = self.conn.execute(
                "select length(checkpoint) from checkpoints where rowid = ?", [latest]
            ).fetchone()[0]
            self.last["checkpoints"] = latest
        writes, latest_write = self.conn.execute(
            "select coalesce(sum(length(value)), 0), max(rowid) from writes where rowid > ?",
            [self.last["writes"]]).fetchone()
        if latest_write is not None:
            self.last["writes"] = latest_write
        return blob, writes, count, last_bytes


def measure(rounds: int = 1000, k: int = 10, trace: bool = True, workdir: Path | None = None,
            progress_every: int = 0) -> GrowthResult:
    """Stream one long run and sample it at every round's end."""
    reset_request_counter()
    log = RequestLog()
    result = GrowthResult(rounds=rounds, k=k)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-growth-", dir=workdir) as tmp, \
            StubServer(handler=log) as stub:
        ctx = Context(base_url=stub.base_url, model="stub", rounds=rounds, prompts_per_round=k,
                      request_timeout=60.0)
        run = create_run(Path(tmp) / "growth", "data_advisor", ctx, embedded=False)
        if trace:
            tracemalloc.start()
        with checkpointer(run) as saver:
            graph = compile_graph(run.method, saver)
            rows = CheckpointRows(sqlite3.connect(f"file:{run.checkpoint_path}?mode=ro",
                                                  uri=True))
            started = last = time.perf_counter()
            last_cpu = time.process_time()
            for update in graph.stream({}, run.config(), context=run.context,
                                       stream_mode="updates"):
                if "load_seeds" in update:
                    run_bytes, checkpoint_bytes = _in_use(run)
                    result.start = {"run_bytes": run_bytes, "checkpoint_bytes": checkpoint_bytes,
                                    "disk_bytes": disk_bytes(run.db_path, run.checkpoint_path)}
                if "rule_check" not in update:  # the last step of a round
                    continue
                now, cpu = time.perf_counter(), time.process_time()
                result.samples.append(_sample(run, rows, len(result.samples) + 1, now - last,
                                              cpu - last_cpu, log, trace))
                stub.requests.clear()  # the stub's own request log is not the app's memory
                stub.headers.clear()
                last = time.perf_counter()  # sampling is off the round clocks
                last_cpu = time.process_time()
                if progress_every and len(result.samples) % progress_every == 0:
                    s = result.samples[-1]
                    print(f"  round {s.round}: {now - started:.0f} s, round {s.seconds:.3f} s, "
                          f"{(s.run_bytes + s.checkpoint_bytes) / 1e6:.1f} MB", flush=True)
            result.wall_s = time.perf_counter() - started
            rows.conn.close()
        if trace:
            result.heap_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        with RunStore(run.db_path, run.run_id) as store:
            result.kept = store.counts()["prompts"]
            result.node_seconds = [r.get("timings") or {} for r in store.rounds()]
    result.maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result.loadavg = (load_before, os.getloadavg()[0])
    return result


def _in_use(run: Run) -> tuple[int, int]:
    return bytes_in_use(run.db_path), bytes_in_use(run.checkpoint_path)


def _sample(run: Run, rows: CheckpointRows, round_: int, seconds: float, cpu: float,
            log: RequestLog, trace: bool) -> Sample:
    run_bytes, checkpoint_bytes = _in_use(run)
    blob, writes, count, last_bytes = rows.new()
    critic = sum(1 for _, kind in log.take() if kind == "critic")
    heap = tracemalloc.get_traced_memory()[0] if trace else 0
    return Sample(round_, seconds, cpu, run_bytes, checkpoint_bytes,
                  disk_bytes(run.db_path, run.checkpoint_path), blob, writes, count, last_bytes,
                  critic, heap)


def report(r: GrowthResult) -> str:
    """Human-readable lines for a result."""
    n = len(r.window(False))

    def row(label: str, start: float, end: float) -> list[object]:
        return [label, start, end, end / start if start else float("nan")]

    body = [
        row("run.sqlite bytes added/round", r.added("run_bytes", False),
            r.added("run_bytes", True)),
        row("checkpoints.sqlite bytes added/round", r.added("checkpoint_bytes", False),
            r.added("checkpoint_bytes", True)),
        row("both files, bytes added/round",
            r.added("run_bytes", False) + r.added("checkpoint_bytes", False),
            r.added("run_bytes", True) + r.added("checkpoint_bytes", True)),
        row("on disk (main + -wal) bytes added/round", r.added("disk_bytes", False),
            r.added("disk_bytes", True)),
        row("checkpoint blobs (+metadata) bytes/round", r.mean("checkpoint_blob_bytes", False),
            r.mean("checkpoint_blob_bytes", True)),
        row("pending-writes bytes/round", r.mean("writes_bytes", False),
            r.mean("writes_bytes", True)),
        row("latest checkpoint blob bytes", r.mean("last_checkpoint_bytes", False),
            r.mean("last_checkpoint_bytes", True)),
        row("checkpoints/round", r.mean("checkpoints", False), r.mean("checkpoints", True)),
        row("critic calls/round", r.mean("critic_calls", False), r.mean("critic_calls", True)),
        row("round wall time, s", r.mean("seconds", False), r.mean("seconds", True)),
        row("round CPU time (process), s", r.mean("cpu_seconds", False),
            r.mean("cpu_seconds", True)),
    ]
    lo, hi = r.bounds(False), r.bounds(True)
    for node in (r.node_seconds[0] if r.node_seconds else {}):
        early = [t.get(node, 0.0) for t in r.node_seconds[lo[0]:lo[1]]]
        late = [t.get(node, 0.0) for t in r.node_seconds[hi[0]:hi[1]]]
        body.append(row(f"  {node}, s", statistics.fmean(early), statistics.fmean(late)))
    last = r.samples[-1]
    lines = [
        f"growth: {len(r.samples)} rounds, K={r.k}, kept {r.kept}, {r.wall_s:.1f} s "
        f"({r.wall_s / max(len(r.samples), 1):.3f} s/round), load average "
        f"{r.loadavg[0]:.1f} -> {r.loadavg[1]:.1f}",
        table(body, ["per round", f"first {n}", f"last {n}", "last/first"]),
        f"files at the end: run.sqlite {last.run_bytes / 1e6:.2f} MB in use, "
        f"checkpoints.sqlite {last.checkpoint_bytes / 1e6:.2f} MB in use, "
        f"{last.disk_bytes / 1e6:.2f} MB on disk with -wal",
    ]
    if r.heap_peak is not None:
        lines.append(f"python heap (tracemalloc): peak {r.heap_peak / 1e6:.1f} MB, at round "
                     f"{r.window(False)[-1].round} {r.window(False)[-1].heap_bytes / 1e6:.1f} MB,"
                     f" at the end {last.heap_bytes / 1e6:.1f} MB")
    lines.append(f"peak RSS (ru_maxrss, whole process incl. stub): {r.maxrss_kib / 1024:.1f} MB")
    lines.append(f"growth ratio (bytes added per round, last {n} / first {n}): "
                 f"{r.total_ratio:.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("-k", type=int, default=10, help="prompts per round")
    parser.add_argument("--no-tracemalloc", action="store_true",
                        help="skip tracemalloc (faster; ru_maxrss only)")
    parser.add_argument("--progress", type=int, default=100, metavar="N",
                        help="print a line every N rounds (0: never)")
    args = parser.parse_args(argv)
    result = measure(args.rounds, args.k, not args.no_tracemalloc,
                     progress_every=args.progress)
    print(report(result))


if __name__ == "__main__":
    main()
