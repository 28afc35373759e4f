"""(f) The prompt judge's cost: judged prompts per second beside the generator's throughput in
one run, and the run's wall time with the ``llm`` judge over the same run without it.

Data Advisor runs (``graph.runner.create_run`` + ``execute``, as the CLI does) against the stub
in a child process with a fixed latency L per request (``_common.ProcessStub``); the judge is
the ``llm`` kind on the same stub (it answers the ``prompt_judge`` template: about one prompt in
five not harmful). With and without the judge alternate, ``--repeat`` times each; the medians
are reported. Per run: generated and judged requests per second of their batches (requests over
the time from a batch's first arrival to its last answer, summed over the rounds), kept prompts
per second of wall time, and the wall-time ratio (the issue's bound: the judge must not halve
the loop's speed, ratio < 2). Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import Call, ProcessStub, table, waves

from graph.context import Context
from graph.runner import create_run, execute
from tools.store import RunStore


@dataclass
class JudgeRun:
    """One run's numbers."""

    judged: bool
    wall_s: float
    kept: int
    generated_per_s: float
    judged_per_s: float
    rejected_not_harmful: int


def batch_rate(calls: list[Call], kind: str, latency: float) -> float:
    """Requests of ``kind`` per second of their batches (first arrival to last answer)."""
    of_kind = [c for c in calls if c[-1] == kind]
    seconds = sum(max(c[1] for c in g) - min(c[0] for c in g) for g in waves(of_kind, latency))
    return len(of_kind) / seconds if seconds else 0.0


def measure(judged: bool, *, rounds: int, k: int, w: int, latency: float,
            workdir: Path) -> JudgeRun:
    """One Data Advisor run against a fresh stub, with or without the ``llm`` judge."""
    with ProcessStub(latency=latency) as stub:
        ctx = Context(base_url=stub.base_url, model="stub", rounds=rounds, prompts_per_round=k,
                      weaknesses_per_round=w, request_timeout=60.0,
                      max_concurrency=max(32, w * k), judge="llm" if judged else None)
        run = create_run(workdir / f"{'judge' if judged else 'plain'}-{time.time_ns()}",
                         "data_advisor", ctx, embedded=False)
        started = time.perf_counter()
        execute(run, resume=False, show_progress=False)
        wall = time.perf_counter() - started
        calls = stub.calls()
    with RunStore(run.db_path, run.run_id) as store:
        kept = store.counts()["prompts"]
        not_harmful = sum(c.get("not_harmful", 0) for c in store.judge_counts().values())
    return JudgeRun(judged, wall, kept, batch_rate(calls, "generator", latency),
                    batch_rate(calls, "judge", latency), not_harmful)


def run(rounds: int = 10, k: int = 10, w: int = 1, latency: float = 0.2,
        repeat: int = 3) -> tuple[JudgeRun, JudgeRun]:
    """Median runs without and with the judge (by wall time), interleaved."""
    results: dict[bool, list[JudgeRun]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            for judged in (False, True):
                results[judged].append(measure(judged, rounds=rounds, k=k, w=w,
                                               latency=latency, workdir=Path(tmp)))

    def median(items: list[JudgeRun]) -> JudgeRun:
        wall = statistics.median_low([r.wall_s for r in items])
        return next(r for r in items if r.wall_s == wall)

    return median(results[False]), median(results[True])


def report(plain: JudgeRun, judged: JudgeRun, *, rounds: int, k: int, w: int,
           latency: float) -> str:
    """The comparison as a table and the ratio."""
    rows = [["without judge", plain.wall_s, plain.kept, plain.kept / plain.wall_s,
             plain.generated_per_s, "-", "-"],
            ["with llm judge", judged.wall_s, judged.kept, judged.kept / judged.wall_s,
             judged.generated_per_s, judged.judged_per_s, judged.rejected_not_harmful]]
    ratio = judged.wall_s / plain.wall_s
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join([
        f"(f) prompt judge: Data Advisor, {rounds} rounds, W={w}, K={k}, stub L={latency} s "
        f"(load {load})",
        table(rows, ["run", "wall s", "kept", "kept/s", "generated/s", "judged/s",
                     "not_harmful"]),
        f"wall time with the judge / without: {ratio:.3f} (bound: < 2, the judge must not "
        "halve the loop's speed)",
    ])


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python benchmarks/bench_judge.py [--rounds N] [-k K] [-w W] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("-w", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    plain, judged = run(args.rounds, args.k, args.w, args.latency, args.repeat)
    print(report(plain, judged, rounds=args.rounds, k=args.k, w=args.w, latency=args.latency))


if __name__ == "__main__":
    main()
