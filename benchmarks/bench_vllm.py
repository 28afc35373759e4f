"""(c) The app on the embedded vLLM: run throughput against the server's raw throughput.

Starts the embedded vLLM server (``tools.server.EmbeddedServer``, default model SmolLM2-135M,
log in a temporary folder) and measures, side by side in one process:

1. single-request output tokens/s (one chat completion, ``max_tokens`` 128, ``ignore_eos``);
2. raw throughput: 32 chat completions sent at once (``max_tokens`` 128, ``ignore_eos`` through
   vLLM's extra body), output tokens from ``usage`` over the wall time; measured before and
   after the run, and averaged (other load on the machine moves it);
3. a Data Advisor run (``graph.runner.create_run`` + ``execute``, default 5 rounds, K=10)
   against that server: kept prompts per minute and run tokens/s (the sum of the round records'
   output ``tokens`` over the run's wall time), and the latter over the raw 32-concurrent
   tokens/s (aim: >= 0.7). Per node, the share of the run's time and its tokens/s show where
   the server is under-used (single sequential calls, batches smaller than 32).

    python benchmarks/bench_vllm.py --rounds 5 -k 10

``--sweep 1,4,8,16,32,64`` measures only the server instead: output tokens/s against requests
in flight (each level sends that many chat completions at once, ``max_tokens`` 128,
``ignore_eos``), the table for choosing ``max_concurrency`` and K for a server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
from _common import table

from graph.context import Context
from graph.runner import create_run, execute
from tools.server import EmbeddedServer
from tools.store import RunStore

TOPICS = ("a lighthouse", "a city garden", "the history of bridges", "a mountain village",
          "how rain forms", "a chess tournament", "an old library", "a train journey")


@dataclass
class VllmResult:
    """Measurements of one benchmark."""

    model: str
    startup_s: float
    single_tps: float
    raw_tps: list[float] = field(default_factory=list)
    concurrency: int = 32
    run_wall_s: float = 0.0
    run_tokens: int = 0
    rounds: int = 0
    k: int = 0
    kept: int = 0
    rejected: int = 0
    node_seconds: dict[str, float] = field(default_factory=dict)
    node_tokens: dict[str, int] = field(default_factory=dict)
    server_tokens: dict[str, float] = field(default_factory=dict)
    """Prompt and generated tokens the server counted during the run (its /metrics)."""
    loadavg: tuple[float, float] = (0.0, 0.0)

    @property
    def raw_mean(self) -> float:
        """Mean raw 32-concurrent tokens/s."""
        return statistics.fmean(self.raw_tps)

    @property
    def run_tps(self) -> float:
        """Output tokens/s of the Data Advisor run."""
        return self.run_tokens / self.run_wall_s

    @property
    def kept_per_minute(self) -> float:
        """Kept prompts per minute of the run."""
        return 60 * self.kept / self.run_wall_s

    @property
    def ratio(self) -> float:
        """Run tokens/s over raw 32-concurrent tokens/s."""
        return self.run_tps / self.raw_mean


def _request(client: openai.OpenAI, model: str, i: int, max_tokens: int) -> int:
    answer = client.chat.completions.create(
        model=model, max_tokens=max_tokens, temperature=0.7,
        messages=[{"role": "user", "content": f"Write a long story about {TOPICS[i % 8]} "
                                              f"(version {i})."}],
        extra_body={"ignore_eos": True},
    )
    return answer.usage.completion_tokens if answer.usage else 0


def server_counters(base_url: str) -> dict[str, float]:
    """vLLM's Prometheus counters of prompt and generated tokens (``/metrics``)."""
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=30).text
    totals: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        for name in ("prompt_tokens", "generation_tokens"):
            if line.startswith(f"vllm:{name}_total"):
                totals[name] += float(line.rsplit(" ", 1)[1])
    return dict(totals)


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


def measure(rounds: int = 5, k: int = 10, concurrency: int = 32, max_tokens: int = 128,
            model: str | None = None, log: Path | None = None) -> VllmResult:
    """Start the server, measure raw throughput, run Data Advisor against it."""
    load_before = os.getloadavg()[0]
    with _started(model, log) as (server, client, tmp):
        name = server.model_name
        throughput(client, name, concurrency, 8)  # warm-up: first batch shapes
        started = time.perf_counter()
        single = _request(client, name, 0, max_tokens) / (time.perf_counter() - started)
        result = VllmResult(model=name, startup_s=server.startup_seconds or 0.0,
                            single_tps=single, concurrency=concurrency, rounds=rounds, k=k)
        result.raw_tps.append(throughput(client, name, concurrency, max_tokens))
        print(f"  single {single:.1f} tok/s, {concurrency} concurrent "
              f"{result.raw_tps[-1]:.1f} tok/s; Data Advisor run ...", flush=True)
        ctx = Context(base_url=server.base_url, model=name, rounds=rounds, prompts_per_round=k)
        run = create_run(tmp / "da", "data_advisor", ctx, embedded=False)
        before = server_counters(server.base_url)
        started = time.perf_counter()
        execute(run, resume=False, show_progress=False)
        result.run_wall_s = time.perf_counter() - started
        after = server_counters(server.base_url)
        result.server_tokens = {k: after[k] - before.get(k, 0.0) for k in after}
        result.raw_tps.append(throughput(client, name, concurrency, max_tokens))
        with RunStore(run.db_path, run.run_id) as store:
            records = store.rounds()
            counts = store.counts()
    seconds: dict[str, float] = defaultdict(float)
    tokens: dict[str, int] = defaultdict(int)
    for record in records:
        for node, value in (record.get("timings") or {}).items():
            seconds[node] += value
        for node, value in (record.get("tokens") or {}).items():
            tokens[node] += value
    result.node_seconds, result.node_tokens = dict(seconds), dict(tokens)
    result.run_tokens = sum(tokens.values())
    result.kept, result.rejected = counts["prompts"], counts["rejected"]
    result.loadavg = (load_before, os.getloadavg()[0])
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
    rows = [[node, r.node_seconds[node], r.node_seconds[node] / r.run_wall_s,
             r.node_tokens.get(node, 0),
             r.node_tokens.get(node, 0) / r.node_seconds[node] if r.node_seconds[node] else 0.0]
            for node in r.node_seconds]
    return "\n".join([
        f"vLLM {r.model}: started in {r.startup_s:.0f} s; load average {r.loadavg[0]:.1f} -> "
        f"{r.loadavg[1]:.1f}",
        f"  single request: {r.single_tps:.1f} tok/s",
        f"  raw {r.concurrency} concurrent (max_tokens 128, ignore_eos): "
        + ", ".join(f"{t:.1f}" for t in r.raw_tps) + f" tok/s (before, after; mean "
        f"{r.raw_mean:.1f})",
        f"  Data Advisor {r.rounds} rounds, K={r.k}: {r.run_wall_s:.1f} s, kept {r.kept}, "
        f"rejected {r.rejected}, {r.run_tokens} output tokens",
        f"  kept prompts/minute: {r.kept_per_minute:.2f}",
        f"  run tokens/s: {r.run_tps:.1f} = {r.ratio:.3f} x raw {r.concurrency}-concurrent "
        f"({r.run_tps / r.single_tps:.2f} x single request)",
        "  the server's counters over the run: "
        + ", ".join(f"{name} {n:.0f} ({n / r.run_wall_s:.1f}/s)"
                    for name, n in r.server_tokens.items()),
        "  per node (round records; summarizer and responder run side by side):",
        *("    " + line for line in table(rows, ["node", "seconds", "share", "tokens",
                                                  "tok/s"]).splitlines()),
    ])


def main(argv: Sequence[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-k", type=int, default=10, help="prompts per round")
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
    result = measure(args.rounds, args.k, args.concurrency, model=args.model, log=args.log)
    print(report(result))


if __name__ == "__main__":
    main()
