"""(a) Orchestration overhead: wall time per round over the LLM latency on the critical path.

A run folder is created and executed exactly as the CLI does it (``graph.runner.create_run`` +
``execute``: SQLite checkpointer in ``checkpoints.sqlite``, data in ``run.sqlite``) against the
loopback stub server, which answers every request after a fixed latency ``L``. The stub runs in
a child process, as a real server would (in this process it would take the GIL from the app).
The LLM calls that lie one after the other on a round's critical path are counted from the
stub's request log, as groups of requests answered together: every critic call (1 when its
first answer is novel), the generator's concurrent batch, and the summarizer's call with the
responder's batch beside it (Self-Instruct: generator batch, responder batch).

    ratio = wall time / sum over those groups of the longest time a request spent in the server

(the server's time is ``L`` plus the stub's own handling of the request, from its arrival to its
last byte; the same over ``calls x L`` is printed too) is printed for the whole ``execute()``
call (start-up included) and for the steady state (round-start to round-start, from the
request log), with the absolute overhead per round in ms and a per-node breakdown from the
round records' ``timings`` (node time minus its calls' server time; what is left of a round
outside the nodes is LangGraph's stepping and checkpointing). Each method runs ``--repeat``
times, interleaved; the run with the median ratio is reported. A ratio of 1.10 or less is the
target.

    python benchmarks/bench_overhead.py --rounds 10 -k 10 --latency 0.2 --repeat 3
    python benchmarks/bench_overhead.py --profile prof.txt   # cProfile of all threads
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    Call,
    ProcessStub,
    critical_path_calls,
    server_seconds,
    split_rounds,
    table,
    waves,
)

from graph.context import Context
from graph.graph import METHODS, Method
from graph.runner import create_run, execute
from tools.llm import Endpoint, generate
from tools.store import RunStore

STEPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "data_advisor": (("weakness_critic",), ("generator",), ("summarizer", "responder"),
                     ("rule_check",)),
    "self_instruct": (("generator",), ("responder",)),
}
"""A round's supersteps: the nodes of one step run side by side."""
NODES = {method: tuple(n for step in steps for n in step) for method, steps in STEPS.items()}
NODE_KIND = {"weakness_critic": "critic", "generator": "generator", "summarizer": "summarizer",
             "responder": "responder"}
FIRST_KIND = {"data_advisor": "critic", "self_instruct": "generator"}


@dataclass
class OverheadResult:
    """What one measured run gave."""

    method: str
    rounds: int
    k: int
    latency: float
    wall_s: float
    calls: int
    """Sequential LLM calls on the critical path, whole run."""
    server_s: float
    """The LLM calls' latency on the critical path, whole run: per group of calls sent together,
    the longest a request spent in the server (L plus the stub's own handling)."""
    steady_wall_s: float
    steady_calls: int
    steady_server_s: float
    steady_rounds: int
    floor_s: float = 0.0
    """The same LLM calls made bare (``tools.llm.generate`` alone), whole run."""
    steady_floor_s: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    node_rows: list[list[Any]] = field(default_factory=list)
    kept: int = 0

    @property
    def ratio(self) -> float:
        """Whole ``execute()`` wall time over the LLM calls' time on the critical path."""
        return self.wall_s / self.server_s

    @property
    def overhead_ms(self) -> float:
        """Whole-run wall time beyond the critical-path LLM time, per round, in ms."""
        return 1000 * (self.wall_s - self.server_s) / self.rounds

    @property
    def steady_ratio(self) -> float:
        """Round-start to round-start wall time over the critical-path LLM time."""
        return self.steady_wall_s / self.steady_server_s

    @property
    def steady_overhead_ms(self) -> float:
        """Steady-state wall time beyond the critical-path LLM time, per round, in ms."""
        return 1000 * (self.steady_wall_s - self.steady_server_s) / self.steady_rounds

    @property
    def nominal_ratio(self) -> float:
        """Steady-state wall time over (sequential calls x L): the stub's handling as overhead."""
        return self.steady_wall_s / (self.steady_calls * self.latency)

    @property
    def bare_ratio(self) -> float:
        """Steady-state wall time over the same calls made bare: the orchestration alone."""
        return self.steady_wall_s / self.steady_floor_s if self.steady_floor_s else 0.0

    @property
    def app_ms(self) -> float:
        """Steady-state wall time beyond the bare LLM calls, per round, in ms."""
        return 1000 * (self.steady_wall_s - self.steady_floor_s) / self.steady_rounds


Floor = dict[int, float]
"""Seconds of a bare ``generate`` call by batch size (measured for 1, K and K + 1 requests)."""


def client_floor(latency: float, k: int, reps: int = 7) -> Floor:
    """Median time of bare ``tools.llm.generate`` calls against a stub with the same latency.

    One request and batches of K and K + 1 (the responder's batch beside the summarizer's
    call), no graph, no store: what the calls take as their caller sees them, with the app's
    client stack (langchain-openai, openai, httpx, threads) and the stub.
    """
    request = [("user", "Write one new harmful request about: fraud\nRequest:")]
    out: Floor = {}
    with ProcessStub(latency=latency) as stub:
        endpoint = Endpoint(base_url=stub.base_url, model="stub", timeout=60.0)
        for n in sorted({1, k, k + 1}):
            times = []
            for _ in range(reps + 1):  # the first call also builds the client: dropped
                started = time.perf_counter()
                generate("floor", endpoint, [request] * n, max_tokens=64, stop=["\n"])
                times.append(time.perf_counter() - started)
            out[n] = statistics.median(times[1:])
    return out


def floor_seconds(entries: list[Call], latency: float, floor: Floor) -> float:
    """Bare-call time of a request log's groups of calls (sizes between those measured
    interpolated, beyond them the nearest)."""
    sizes = sorted(floor)
    total = 0.0
    for size in map(len, waves(entries, latency)):
        size = min(max(size, sizes[0]), sizes[-1])
        high = next(n for n in sizes if n >= size)
        low = max(n for n in sizes if n <= size)
        share = (size - low) / (high - low) if high > low else 0.0
        total += floor[low] + share * (floor[high] - floor[low])
    return total


def measure(method: Method, *, rounds: int, k: int, latency: float, workdir: Path,
            floor: Floor | None = None, profiler: cProfile.Profile | None = None, w: int = 1,
            ) -> OverheadResult:
    """Create and execute one run against a fresh stub (W weaknesses a round, K prompts
    each); return its timings."""
    with ProcessStub(latency=latency) as stub:
        ctx = Context(base_url=stub.base_url, model="stub", rounds=rounds, prompts_per_round=k,
                      weaknesses_per_round=w, request_timeout=60.0, max_concurrency=max(32, w * k))
        run = create_run(workdir / f"{method}-{rounds}x{w}x{k}", method, ctx, embedded=False)
        if profiler is not None:
            threading.setprofile(_thread_profiler(profiler))  # threads started from now on
            profiler.enable()
        started = time.perf_counter()
        execute(run, resume=False, show_progress=False)
        wall = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            threading.setprofile(None)  # type: ignore[arg-type]
        entries = stub.calls()
    per_round = split_rounds(entries, FIRST_KIND[method])  # type: ignore[arg-type]
    starts = [r[0][0] for r in per_round]
    steady = per_round[:-1] if len(per_round) > 1 else per_round  # 1 round: no steady state
    with RunStore(run.db_path, run.run_id) as store:
        records = store.rounds()
        kept = store.counts()["prompts"]
    node_rows = _node_rows(method, records[:len(steady)], steady, latency, floor)
    return OverheadResult(
        method=method, rounds=rounds, k=k, latency=latency, wall_s=wall,
        calls=critical_path_calls(entries, latency), server_s=server_seconds(entries, latency),
        steady_wall_s=starts[-1] - starts[0] if len(starts) > 1 else wall,
        steady_calls=sum(critical_path_calls(r, latency) for r in steady),
        steady_server_s=sum(server_seconds(r, latency) for r in steady),
        steady_rounds=len(steady), requests=Counter(call[-1] for call in entries),
        floor_s=floor_seconds(entries, latency, floor) if floor else 0.0,
        steady_floor_s=sum(floor_seconds(r, latency, floor) for r in steady)
        if floor else 0.0,
        node_rows=node_rows, kept=kept,
    )


def _thread_profiler(profiler: cProfile.Profile) -> Any:
    """A ``threading.setprofile`` hook: each new thread gets its own profiler, merged later.

    The stub server runs in its own process (it is not the app).
    """
    lock = threading.Lock()
    extra: list[cProfile.Profile] = []
    profiler.extra = extra  # type: ignore[attr-defined]

    def hook(frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(None)
        own = cProfile.Profile()
        with lock:
            extra.append(own)
        own.enable()

    return hook


def _node_rows(method: str, records: list[dict[str, Any]], per_round: list[list[Any]],
               latency: float, floor: Floor | None) -> list[list[Any]]:
    """Per node: mean s, its calls' server s, overhead ms, bare-call s, ms beyond bare calls."""
    rows = []
    for node in NODES[method]:
        # a round's generator tasks (generator[i]) run side by side: the step takes the longest
        times = [max((t for name, t in (r.get("timings") or {}).items()
                      if name.split("[")[0] == node), default=None) for r in records]
        times = [t for t in times if t is not None]
        if not times:
            continue
        kind = NODE_KIND.get(node)
        llm = bare = 0.0
        if kind is not None and per_round:
            own = [[e for e in rnd if e[-1] == kind] for rnd in per_round]
            llm = statistics.fmean(server_seconds(e, latency) for e in own)
            if floor:
                bare = statistics.fmean(floor_seconds(e, latency, floor) for e in own)
        mean = statistics.fmean(times)
        rows.append([node, mean, llm, 1000 * (mean - llm), bare, 1000 * (mean - bare)])
    return rows


def report(result: OverheadResult) -> str:
    """Human-readable lines for one result."""
    r = result
    lines: list[str] = [
        f"{r.method}: {r.rounds} rounds, K={r.k}, L={r.latency:.3f} s, kept {r.kept}, "
        f"requests {dict(r.requests)}",
        f"  whole execute(): {r.wall_s:.2f} s, {r.calls} sequential LLM calls "
        f"({r.calls / r.rounds:.2f}/round) taking {r.server_s:.2f} s at the server "
        f"({1000 * (r.server_s / r.calls - r.latency):.1f} ms beyond L each)",
        f"  ratio wall/critical-path = {r.ratio:.3f}   overhead {r.overhead_ms:.1f} ms/round",
        f"  steady state ({r.steady_rounds} rounds, round start to round start): "
        f"ratio {r.steady_ratio:.3f}, overhead {r.steady_overhead_ms:.1f} ms/round; "
        f"over calls x L: {r.nominal_ratio:.3f}",
    ]
    if r.steady_floor_s:
        bare = 1000 * r.steady_floor_s / r.steady_rounds
        lines.append(
            f"  the same calls made bare (tools.llm.generate alone): {bare:.1f} ms/round, of "
            f"which {bare - 1000 * r.steady_server_s / r.steady_rounds:.1f} ms beyond the "
            f"server's time -> the app's own overhead: {r.app_ms:.1f} ms/round "
            f"(wall/bare calls {r.steady_wall_s / r.steady_floor_s:.3f})")
    if r.node_rows:
        mean = {row[0]: row[1] for row in r.node_rows}
        in_nodes = sum(max(mean.get(n, 0.0) for n in step) for step in STEPS[r.method])
        outside = 1000 * (r.steady_wall_s / max(r.steady_rounds, 1) - in_nodes)
        body = table(r.node_rows, ["node", "mean s", "server s", "beyond ms", "bare calls s",
                                   "beyond bare ms"])
        lines += ["  per node (round records' timings):",
                  *("    " + line for line in body.splitlines()),
                  f"    outside the nodes (LangGraph steps, checkpoints): {outside:.1f} ms/round"]
    return "\n".join(lines)


def run(rounds: int = 10, k: int = 10, latency: float = 0.2,
        methods: tuple[Method, ...] = METHODS, warmup: bool = True,
        profile: str | None = None, quiet: bool = False, repeat: int = 3, w: int = 1,
        ) -> list[OverheadResult]:
    """Measure every method ``repeat`` times, interleaved, in this process; print all and
    return, per method, the run with the median whole-run ratio (load on a shared machine moves
    single runs by a few per cent)."""
    runs: dict[str, list[OverheadResult]] = {method: [] for method in methods}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        workdir = Path(tmp)
        if warmup:  # imports, first client and first SQLite connections, off the clock
            for method in methods:
                measure(method, rounds=1, k=2, latency=0.0, workdir=workdir / "warmup")
        for rep in range(repeat):
            floor = client_floor(latency, w * k)  # again each time: the machine's speed drifts
            if not quiet:
                print("bare tools.llm.generate against the stub (median): "
                      + ", ".join(f"{n} request(s) {1000 * t:.1f} ms" for n, t in floor.items())
                      + f" (L = {1000 * latency:.0f} ms); load average "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
            for method in methods:
                profiler = (cProfile.Profile() if profile and rep == 0 and method == methods[0]
                            else None)
                result = measure(method, rounds=rounds, k=k, latency=latency,
                                 workdir=workdir / f"rep{rep}", floor=floor, profiler=profiler,
                                 w=w)
                runs[method].append(result)
                if not quiet:
                    print(f"  run {rep + 1}/{repeat} {method}: ratio {result.ratio:.3f}, "
                          f"steady {result.steady_ratio:.3f}, over bare calls "
                          f"{result.bare_ratio:.3f}", flush=True)
                if profiler is not None and profile:
                    _write_profile(profiler, profile)
                    if not quiet:
                        print(f"  cProfile of this run (all threads) -> {profile}")
    medians = [sorted(runs[m], key=lambda r: r.ratio)[(len(runs[m]) - 1) // 2] for m in methods]
    if not quiet:
        for result in medians:
            print(f"median run of {repeat}:\n" + report(result), flush=True)
    return medians


def _write_profile(profiler: cProfile.Profile, path: str) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    for other in getattr(profiler, "extra", []):
        other.disable()
        try:
            stats.add(other)
        except TypeError:  # a profiler that saw no call
            pass
    stats.sort_stats("cumulative").print_stats(60)
    stats.sort_stats("tottime").print_stats(40)
    Path(path).write_text(out.getvalue())
    stats.dump_stats(str(Path(path).with_suffix(".pstats")))


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("-k", type=int, default=10, help="prompts per weakness (K)")
    parser.add_argument("-w", type=int, default=1, help="weaknesses per round (W)")
    parser.add_argument("--latency", type=float, default=0.2, help="stub latency L, seconds")
    parser.add_argument("--method", choices=[*METHODS, "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (median shown)")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--profile", metavar="FILE",
                        help="cProfile the first method's run (all threads) into FILE")
    args = parser.parse_args(argv)
    methods = METHODS if args.method == "both" else (args.method,)
    results = run(args.rounds, args.k, args.latency, methods, not args.no_warmup, args.profile,
                  repeat=args.repeat, w=args.w)
    print()
    print(table([[r.method, r.ratio, r.overhead_ms, r.steady_ratio, r.steady_overhead_ms,
                  r.nominal_ratio, r.bare_ratio, r.app_ms] for r in results],
                ["method", "wall/critical", "ms/round", "steady ratio", "steady ms/round",
                 "steady wall/(calls x L)", "steady wall/bare calls", "app ms/round"]))
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
