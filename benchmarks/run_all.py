"""Run the generation benchmarks one after the other and print a summary table of their ratios.

(a) ``bench_overhead``: wall time per round over the critical-path LLM latency (stub, L=0.2 s);
(b) ``bench_growth``: SQLite bytes added per round, last 50 rounds over the first 50 (stub,
    a modest number of rounds by default; ``--growth-rounds 1000`` for the full measurement);
(c) ``bench_vllm``: run tokens/s over the embedded vLLM's raw 32-concurrent tokens/s
    (``--skip-vllm`` leaves it out; it starts the real server, minutes on CPU);
(d) ``bench_novelty``: novel weaknesses in the last 100 rounds, today's summary design against
    the merging one, and the round time at the end over round 10 (``--novelty-rounds``).
(e) ``bench_dedup``: the duplicate filter, MinHash LSH against exact Jaccard: agreement of
    the decisions on 10K queries and memory per prompt at 100K (``--dedup-prompts``).
(f) ``bench_judge``: wall time of a Data Advisor run with the ``llm`` prompt judge over the
    same run without it (stub, L=0.2 s), judged prompts per second beside the generator's.

Ratios are measured side by side in one run; nothing here asserts a number.

    python benchmarks/run_all.py                 # what `make bench` runs
    python benchmarks/run_all.py --skip-vllm --growth-rounds 1000
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Sequence

import bench_dedup
import bench_growth
import bench_judge
import bench_novelty
import bench_overhead
import bench_vllm
from _common import table


def main(argv: Sequence[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="(a) rounds per method")
    parser.add_argument("-k", type=int, default=10, help="prompts per round, all benchmarks")
    parser.add_argument("--latency", type=float, default=0.2, help="(a) stub latency, s")
    parser.add_argument("--growth-rounds", type=int, default=200, help="(b) rounds")
    parser.add_argument("--vllm-rounds", type=int, default=4, help="(c) rounds at each W x K")
    parser.add_argument("--novelty-rounds", type=int, default=200, help="(d) rounds")
    parser.add_argument("--dedup-prompts", type=int, default=100_000,
                        help="(e) prompts held for the memory measurement")
    parser.add_argument("--skip-vllm", action="store_true", help="leave (c) out")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}\n")
    rows: list[list[object]] = []

    print(f"== (a) orchestration overhead: {args.rounds} rounds, K={args.k}, "
          f"L={args.latency} s ==")
    for r in bench_overhead.run(args.rounds, args.k, args.latency):
        rows.append([f"(a) {r.method}", "wall / critical-path LLM time", r.ratio,
                     f"{r.overhead_ms:.0f} ms/round overhead", "<= 1.10"])
        rows.append([f"(a) {r.method}", "same, steady state", r.steady_ratio,
                     f"{r.steady_overhead_ms:.0f} ms/round overhead", "<= 1.10"])
        rows.append([f"(a) {r.method}", "steady, over the same calls made bare", r.bare_ratio,
                     f"{r.app_ms:.0f} ms/round beyond the bare calls", "<= 1.10"])

    print(f"\n== (b) growth: {args.growth_rounds} rounds, K={args.k} ==")
    growth = bench_growth.measure(args.growth_rounds, args.k, progress_every=0)
    print(bench_growth.report(growth))
    n = len(growth.window(False))
    rows.append(["(b) growth", f"bytes added/round, last {n} / first {n}", growth.total_ratio,
                 f"peak heap {(growth.heap_peak or 0) / 1e6:.1f} MB, "
                 f"maxrss {growth.maxrss_kib / 1024:.0f} MB", "<= 1.2"])

    print(f"\n== (d) novelty: {args.novelty_rounds} rounds, K={args.k} ==")
    novelty = [bench_novelty.measure(d, args.novelty_rounds, args.k) for d in ("today", "new")]
    print(bench_novelty.report(novelty, args.k))
    last = {r.design: sum(r.novel[-100:]) for r in novelty}
    rows.append(["(d) novelty", "novel weaknesses, last 100 rounds (new)", last["new"],
                 f"today's design: {last['today']}", "higher"])
    rows.append(["(d) novelty", "round time at the end / at round 10 (new)",
                 bench_novelty.round_time_ratio(novelty[1].seconds), "", "<= 1.5"])

    print(f"\n== (e) duplicate filter: agreement on 10,000 queries, memory at "
          f"{args.dedup_prompts:,} prompts ==")
    agreement = bench_dedup.agreement(10_000, 5_000, 0.8)
    print(bench_dedup.report_agreement(agreement))
    texts = bench_dedup.many_prompts(args.dedup_prompts)
    exact = bench_dedup.memory_per_prompt(texts, 0.8, approximate=False)
    approx = bench_dedup.memory_per_prompt(texts, 0.8, approximate=True)
    print(bench_dedup.report_memory(len(texts), exact, approx))
    rows.append(["(e) duplicate filter", "MinHash decisions alike exact ones", agreement.agreement,
                 f"precision {agreement.precision:.3f}, recall {agreement.recall:.3f}", "-"])
    rows.append(["(e) duplicate filter", "memory per prompt, MinHash / exact", approx / exact,
                 f"{approx:,.0f} vs {exact:,.0f} bytes", "lower"])

    print(f"\n== (f) prompt judge: {args.rounds} rounds, K={args.k}, L={args.latency} s ==")
    plain, judged = bench_judge.run(args.rounds, args.k, 1, args.latency)
    print(bench_judge.report(plain, judged, rounds=args.rounds, k=args.k, w=1,
                             latency=args.latency))
    rows.append(["(f) prompt judge", "wall time with the llm judge / without",
                 judged.wall_s / plain.wall_s, f"{judged.judged_per_s:.1f} judged/s, "
                 f"{judged.generated_per_s:.1f} generated/s", "< 2"])

    if not args.skip_vllm:
        shapes = bench_vllm.parse_shapes(f"1x{args.k},3x{args.k},3x{args.k}o,1x32")
        print(f"\n== (c) embedded vLLM: {args.vllm_rounds} rounds at each W x K "
              f"({', '.join(shape.label for shape in shapes)}; o: answers in the background) ==")
        vllm = bench_vllm.measure(shapes, args.vllm_rounds)
        print(bench_vllm.report(vllm))
        for run in vllm.runs:
            rows.append([f"(c) vLLM {run.shape.label}", "run tok/s / raw 32-concurrent tok/s",
                         vllm.ratio(run), f"{run.tps:.0f} vs {vllm.raw_mean:.0f} tok/s, "
                         f"{run.kept_per_minute:.1f} kept/min",
                         ">= 0.7" if run.shape.w * run.shape.k >= 30 else "-"])

    print(f"\n== summary ({time.perf_counter() - started:.0f} s) ==")
    print(table(rows, ["benchmark", "measure", "ratio", "detail", "target"]))


if __name__ == "__main__":
    main()
