"""(c) The app on the embedded vLLM: run throughput against the server's raw throughput.

Starts the embedded vLLM server (``tools.server.EmbeddedServer``, default model SmolLM2-135M,
log in a temporary folder) and measures, side by side in one process:

1. single-request output tokens/s (one chat completion, ``max_tokens`` 128, ``ignore_eos``);
2. raw throughput: 32 chat completions sent at once (``max_tokens`` 128, ``ignore_eos`` through
   vLLM's extra body), output tokens from ``usage`` over the wall time; measured before and
   after the run, and averaged (other load on the machine moves it);
3. Data Advisor runs (``graph.runner.create_run`` + ``execute``) against that server, one per
   ``--shapes`` entry ``WxK`` (W weaknesses a round, K prompts each; a trailing ``o``, as in
   ``3x10o``, answers in the background: ``Context.overlap_responses``; a ``d``, as in
   ``3x10od``, has the summarizer write only the changed lines: ``Context.summary_update =
   "delta"``; default ``1x10,3x10,3x10o,1x32``, each ``--rounds`` rounds), one after the other
   on the same server: kept
   prompts per minute, run tokens/s (the sum of the round records' output ``tokens`` over the
   run's wall time) and the latter over the raw 32-concurrent tokens/s (aim: >= 0.7 at
   W x K >= 30), with the server's own prompt and generation token counters over each run and
   its requests running, sampled every half second (mean, and the share of the run with at
   most one request running: the advisor's single calls alone).
   Per node, the share of the run's time and its tokens/s show where the server is under-used
   (single sequential calls, batches smaller than 32).

    python benchmarks/bench_vllm.py --rounds 4 --shapes 1x10,3x10,3x10o,1x32
    python benchmarks/bench_vllm.py --rounds 4 --shapes 1x10,3x10o,3x10od,1x32od

``--sweep 1,4,8,16,32,64`` measures only the server instead: output tokens/s against requests
in flight (each level sends that many chat completions at once, ``max_tokens`` 128,
``ignore_eos``), the table for choosing ``max_concurrency`` and K for a server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import httpx
import openai
from _common import table

from graph.context import Context
from graph.runner import create_run, execute
from graph.templates import load_templates
from tools.server import EmbeddedServer
from tools.store import RunStore

TOPICS = ("a lighthouse", "a city garden", "the history of bridges", "a mountain village",
          "how rain forms", "a chess tournament", "an old library", "a train journey")


class Shape(NamedTuple):
    """One run's settings: W, K, whether the answers overlap the next rounds, whether the
    summarizer writes only the changed lines."""

    w: int
    k: int
    overlap: bool = False
    delta: bool = False

    @property
    def label(self) -> str:
        """``WxK`` with ``o`` (overlap) and ``d`` (delta) as set."""
        return f"{self.w}x{self.k}" + "o" * self.overlap + "d" * self.delta


@dataclass
class RunResult:
    """One Data Advisor run of the benchmark at one :class:`Shape` (W, K, overlap, delta)."""

    shape: Shape
    rounds: int
    wall_s: float = 0.0
    tokens: int = 0
    kept: int = 0
    rejected: int = 0
    node_seconds: dict[str, float] = field(default_factory=dict)
    node_tokens: dict[str, int] = field(default_factory=dict)
    server_tokens: dict[str, float] = field(default_factory=dict)
    """Prompt and generated tokens the server counted during the run (its /metrics)."""
    running: list[float] = field(default_factory=list)
    """The server's requests running (``vllm:num_requests_running``), sampled every
    :data:`SAMPLE_S` seconds during the run."""

    def share_running(self, at_most: int) -> float:
        """Share of the samples with at most ``at_most`` requests running."""
        return sum(n <= at_most for n in self.running) / len(self.running) if self.running \
            else float("nan")

    @property
    def mean_running(self) -> float:
        """Mean requests running over the run."""
        return statistics.fmean(self.running) if self.running else float("nan")

    @property
    def tps(self) -> float:
        """Output tokens/s of the run."""
        return self.tokens / self.wall_s

    @property
    def kept_per_minute(self) -> float:
        """Kept prompts per minute of the run."""
        return 60 * self.kept / self.wall_s


@dataclass
class VllmResult:
    """Measurements of one benchmark: the server's, then one run per shape."""

    model: str
    startup_s: float
    single_tps: float
    raw_tps: list[float] = field(default_factory=list)
    concurrency: int = 32
    runs: list[RunResult] = field(default_factory=list)
    responder_tps: float = 0.0
    """The responder's own requests at ``concurrency`` in flight (:func:`responder_throughput`)."""
    loadavg: tuple[float, float] = (0.0, 0.0)

    @property
    def raw_mean(self) -> float:
        """Mean raw 32-concurrent tokens/s."""
        return statistics.fmean(self.raw_tps)

    def ratio(self, run: RunResult) -> float:
        """A run's tokens/s over the raw 32-concurrent tokens/s."""
        return run.tps / self.raw_mean


def _request(client: openai.OpenAI, model: str, i: int, max_tokens: int) -> int:
    answer = client.chat.completions.create(
        model=model, max_tokens=max_tokens, temperature=0.7,
        messages=[{"role": "user", "content": f"Write a long story about {TOPICS[i % 8]} "
                                              f"(version {i})."}],
        extra_body={"ignore_eos": True},
    )
    return answer.usage.completion_tokens if answer.usage else 0


SAMPLE_S = 0.5
"""Seconds between two readings of the server's requests running."""


@contextmanager
def sampled_running(base_url: str, into: list[float]) -> Iterator[None]:
    """Read ``vllm:num_requests_running`` every :data:`SAMPLE_S` seconds into ``into`` while
    the block runs (a thread of its own)."""
    done = threading.Event()

    def sample() -> None:
        with httpx.Client(timeout=10) as client:
            while not done.wait(SAMPLE_S):
                text = client.get(base_url.removesuffix("/v1") + "/metrics").text
                into.append(metric(text, "vllm:num_requests_running"))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def server_counters(base_url: str) -> dict[str, float]:
    """vLLM's Prometheus counters of prompt and generated tokens (``/metrics``)."""
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=30).text
    return {name: metric(text, f"vllm:{name}_total")
            for name in ("prompt_tokens", "generation_tokens")}


def metric(text: str, name: str) -> float:
    """A Prometheus metric's value in ``/metrics`` text, summed over its label sets."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "))


def responder_throughput(client: openai.OpenAI, model: str, prompts: Sequence[str],
                         concurrency: int, max_tokens: int) -> float:
    """Output tokens/s of the responder's own requests (its system prompt, kept prompts of a
    run, its ``max_tokens``, stopping where the model stops) sent ``concurrency`` at a time:
    what the server does with the app's biggest batch, prefill and uneven lengths included."""
    system = load_templates()["responder"]

    def one(prompt: str) -> int:
        answer = client.chat.completions.create(
            model=model, max_tokens=max_tokens, temperature=0.7,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
        )
        return answer.usage.completion_tokens if answer.usage else 0

    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        tokens = sum(pool.map(one, prompts))
        return tokens / (time.perf_counter() - started)


def throughput(client: openai.OpenAI, model: str, concurrency: int, max_tokens: int = 128,
               ) -> float:
    """Output tokens/s of ``concurrency`` chat completions sent at once."""
    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        tokens = sum(pool.map(lambda i: _request(client, model, i, max_tokens),
                              range(concurrency)))
        return tokens / (time.perf_counter() - started)


@contextmanager
def _started(model: str | None, log: Path | None
             ) -> Iterator[tuple[EmbeddedServer, openai.OpenAI, Path]]:
    """The embedded server (log in a temporary folder unless ``log``), a client, the folder."""
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        server = EmbeddedServer(model, log_path=log or Path(tmp) / "vllm.log", max_model_len=4096)
        print(f"starting vLLM ({server.model_name}), log {server.log_path} ...", flush=True)
        with server:
            client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", timeout=600,
                                   max_retries=0)
            yield server, client, Path(tmp)


DEFAULT_SHAPES: list[Shape] = [Shape(1, 10), Shape(3, 10), Shape(3, 10, True), Shape(1, 32)]


def measure(shapes: Sequence[Shape] = DEFAULT_SHAPES, rounds: int = 4,
            concurrency: int = 32, max_tokens: int = 128, model: str | None = None,
            log: Path | None = None) -> VllmResult:
    """Start the server, measure raw throughput, run Data Advisor at each (W, K) against it,
    raw throughput again."""
    load_before = os.getloadavg()[0]
    with _started(model, log) as (server, client, tmp):
        name = server.model_name
        throughput(client, name, concurrency, 8)  # warm-up: first batch shapes
        started = time.perf_counter()
        single = _request(client, name, 0, max_tokens) / (time.perf_counter() - started)
        result = VllmResult(model=name, startup_s=server.startup_seconds or 0.0,
                            single_tps=single, concurrency=concurrency)
        result.raw_tps.append(throughput(client, name, concurrency, max_tokens))
        print(f"  single {single:.1f} tok/s, {concurrency} concurrent "
              f"{result.raw_tps[-1]:.1f} tok/s", flush=True)
        prompts: list[str] = []
        for shape in shapes:
            print(f"  Data Advisor, W={shape.w}, K={shape.k}"
                  f"{', overlap' if shape.overlap else ''}{', delta' if shape.delta else ''}, "
                  f"{rounds} rounds ...", flush=True)
            result.runs.append(_run(server, tmp, shape, rounds, concurrency, prompts))
        result.raw_tps.append(throughput(client, name, concurrency, max_tokens))
        result.responder_tps = responder_throughput(
            client, name, prompts[: 2 * concurrency], concurrency, Context().responder_max_tokens)
    result.loadavg = (load_before, os.getloadavg()[0])
    return result


def _run(server: EmbeddedServer, tmp: Path, shape: Shape, rounds: int,
         concurrency: int, prompts: list[str]) -> RunResult:
    """One Data Advisor run at W x K against the server (its kept prompts added to
    ``prompts``)."""
    w, k, overlap, delta = shape
    ctx = Context(base_url=server.base_url, model=server.model_name, rounds=rounds,
                  prompts_per_round=k, weaknesses_per_round=w, max_concurrency=concurrency,
                  overlap_responses=overlap, summary_update="delta" if delta else "rewrite")
    run = create_run(tmp / f"da-{shape.label}", "data_advisor", ctx, embedded=False)
    before = server_counters(server.base_url)
    running: list[float] = []
    started = time.perf_counter()
    with sampled_running(server.base_url, running):
        execute(run, resume=False, show_progress=False)
    result = RunResult(shape=shape, rounds=rounds, wall_s=time.perf_counter() - started,
                       running=running)
    after = server_counters(server.base_url)
    result.server_tokens = {name: after[name] - before.get(name, 0.0) for name in after}
    with RunStore(run.db_path, run.run_id) as store:
        records = store.rounds()
        counts = store.counts()
        prompts += [sample["prompt"] for sample in store.samples()]
    seconds: dict[str, float] = defaultdict(float)
    tokens: dict[str, int] = defaultdict(int)
    for record in records:
        longest: dict[str, float] = defaultdict(float)
        for node, value in (record.get("timings") or {}).items():
            base = node.split("[")[0]  # a round's generator tasks run side by side: the longest
            longest[base] = max(longest[base], value)
        for node, value in longest.items():
            seconds[node] += value
        for node, value in (record.get("tokens") or {}).items():
            tokens[node.split("[")[0]] += value
    result.node_seconds, result.node_tokens = dict(seconds), dict(tokens)
    result.tokens = sum(tokens.values())
    result.kept, result.rejected = counts["prompts"], counts["rejected"]
    return result


def sweep(levels: Sequence[int], max_tokens: int = 128, model: str | None = None,
          log: Path | None = None) -> list[list[object]]:
    """Start the server; output tokens/s at each number of requests in flight."""
    rows: list[list[object]] = []
    with _started(model, log) as (server, client, _):
        throughput(client, server.model_name, max(levels), 8)  # warm-up: batch shapes
        first = 0.0
        for level in levels:
            tps = throughput(client, server.model_name, level, max_tokens)
            first = first or tps
            rows.append([level, tps, tps / first])
            print(f"  {level} in flight: {tps:.1f} tok/s", flush=True)
    return rows


def report(r: VllmResult) -> str:
    """Human-readable lines for a result."""
    rows = [[run.shape.label, run.shape.w * run.shape.k, run.wall_s, run.kept, run.kept_per_minute,
             run.tps, r.ratio(run), run.tps / r.responder_tps if r.responder_tps else 0.0,
             run.server_tokens.get("prompt_tokens", 0.0),
             run.server_tokens.get("generation_tokens", 0.0), run.mean_running,
             run.share_running(1), run.share_running(0)] for run in r.runs]
    lines = [
        f"vLLM {r.model}: started in {r.startup_s:.0f} s; load average {r.loadavg[0]:.1f} -> "
        f"{r.loadavg[1]:.1f}",
        f"  single request: {r.single_tps:.1f} tok/s",
        f"  raw {r.concurrency} concurrent (max_tokens 128, ignore_eos): "
        + ", ".join(f"{t:.1f}" for t in r.raw_tps) + f" tok/s (before, after; mean "
        f"{r.raw_mean:.1f})",
        f"  the responder's own requests, {r.concurrency} in flight (kept prompts of the runs, "
        f"its system prompt and max_tokens, stopping where the model stops): "
        f"{r.responder_tps:.1f} tok/s = {r.responder_tps / r.raw_mean:.3f} x raw",
        "  Data Advisor runs, one after the other on this server (ratio: run tok/s over the "
        f"raw {r.concurrency}-concurrent mean; aim >= 0.7 at W x K >= 30; over responder: the "
        "same over the responder's own requests):",
        *("    " + line for line in table(rows, [
            "W x K", "a round", "seconds", "kept", "kept/min", "run tok/s", "ratio",
            "over responder", "server prompt tok", "server gen tok", "mean running",
            "share <= 1 running", "share idle"]).splitlines()),
        f"  (running: the server's requests running, read from /metrics every {SAMPLE_S} s; "
        "share <= 1: when at most the advisor's single call ran)",
    ]
    for run in r.runs:
        nodes = [[node, run.node_seconds[node], run.node_seconds[node] / run.wall_s,
                  run.node_tokens.get(node, 0),
                  run.node_tokens.get(node, 0) / run.node_seconds[node]
                  if run.node_seconds[node] else 0.0] for node in run.node_seconds]
        lines += [f"  per node at {run.shape.label} (round records; a round's generator tasks "
                  "counted by the longest; summarizer and responder side by side; with o the "
                  "responder's time runs from its hand-off to its last answer, beside the next "
                  "rounds):",
                  *("    " + line for line in table(nodes, ["node", "seconds", "share",
                                                            "tokens", "tok/s"]).splitlines())]
    return "\n".join(lines)


def parse_shapes(text: str) -> list[Shape]:
    """``"1x10,3x10od"`` -> ``[Shape(1, 10), Shape(3, 10, True, True)]`` (W x K, o: overlap,
    d: delta summaries)."""
    shapes = []
    for item in text.split(","):
        w, _, rest = item.strip().lower().partition("x")
        k = rest.rstrip("od")
        flags = rest[len(k):]
        if not (w.isdigit() and k.isdigit() and int(w) > 0 and int(k) > 0) \
                or len(set(flags)) != len(flags):
            raise argparse.ArgumentTypeError(
                f"{item!r}: write WxK, then o (overlap) and/or d (delta), e.g. 3x10od")
        shapes.append(Shape(int(w), int(k), "o" in flags, "d" in flags))
    return shapes


def main(argv: Sequence[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each run")
    parser.add_argument("--shapes", type=parse_shapes, default=DEFAULT_SHAPES,
                        help="runs to compare, W x K each, o: answers in the background, d: "
                        "delta summaries (default 1x10,3x10,3x10o,1x32)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--model", help="HF id or local path (default: the embedded SmolLM2)")
    parser.add_argument("--log", type=Path, help="vLLM log file (default: a temporary one)")
    parser.add_argument("--sweep", help="comma-separated requests in flight: measure the server "
                        "only, tokens/s at each (e.g. 1,4,8,16,32,64)")
    args = parser.parse_args(argv)
    if args.sweep:
        levels = [int(n) for n in args.sweep.split(",")]
        rows = sweep(levels, model=args.model, log=args.log)
        print(f"load average {os.getloadavg()[0]:.1f}")
        print(table(rows, ["in flight", "tok/s", "x first level"]))
        return
    result = measure(args.shapes, args.rounds, args.concurrency, model=args.model, log=args.log)
    print(report(result))


if __name__ == "__main__":
    main()
