"""Evaluation throughput on the embedded vLLM, relative to the same server's raw throughput.

In one run, against one embedded server: raw output tokens/s at 32 concurrent requests; the
safety evaluation of a CatQA slice (generation + refusal judge): items/s and its generation
tokens/s over the raw tokens/s; MMLU scoring by answer-letter log-likelihood: questions/s, and
the prompt tokens/s it processes. Prints ratios; asserts nothing.

    python benchmarks/bench_eval.py --catqa ../shared/data/catqa_english.json \
        --mmlu ../shared/data/mmlu_validation.jsonl --n 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import openai
from bench_vllm import throughput
from transformers import AutoTokenizer

from evaluation.data import load_catqa, load_mmlu
from evaluation.safety import evaluate_safety
from evaluation.utility import evaluate_utility
from tools.llm import Endpoint
from tools.server import EmbeddedServer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv: Sequence[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catqa", type=Path, default=SHARED / "catqa_english.json")
    parser.add_argument("--mmlu", type=Path, default=SHARED / "mmlu_validation.jsonl")
    parser.add_argument("--n", type=int, default=64, help="items per evaluation")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        out = Path(tmp)
        with EmbeddedServer(log_path=out / "vllm.log") as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", timeout=600)
            endpoint = Endpoint(server.base_url, server.model_name)
            throughput(client, server.model_name, 32, 8)  # warm-up
            raw = throughput(client, server.model_name, 32, 128)

            started = time.perf_counter()
            safety = evaluate_safety(load_catqa(args.catqa), dataset="catqa", endpoint=endpoint,
                                     judge="refusal", out_dir=out, label="bench",
                                     model=server.model_name, limit=args.n, progress=False)
            safety_s = time.perf_counter() - started
            tokenizer = AutoTokenizer.from_pretrained(server.model_path)
            tokens = sum(len(tokenizer(json.loads(line)["response"])["input_ids"]) for line in
                         (out / safety["responses_file"]).read_text().splitlines())

            started = time.perf_counter()
            utility = evaluate_utility(load_mmlu(args.mmlu), backend="endpoint", label="bench",
                                       endpoint=endpoint, out_dir=out, limit=args.n,
                                       progress=False)
            utility_s = time.perf_counter() - started
            raw_after = throughput(client, server.model_name, 32, 128)

    raw_mean = (raw + raw_after) / 2
    gen_tps = tokens / safety_s
    print(f"raw 32-concurrent: {raw:.1f} / {raw_after:.1f} tok/s (before/after), "
          f"mean {raw_mean:.1f}")
    print(f"safety ({safety['n']} CatQA items, refusal judge): {safety['n'] / safety_s:.2f} "
          f"items/s, {gen_tps:.1f} generated tok/s = {gen_tps / raw_mean:.2f} x raw")
    print(f"utility ({utility['n']} MMLU questions, loglik): {utility['n'] / utility_s:.2f} "
          f"questions/s; per question the server does one prefill and one token; "
          f"{utility['n'] / utility_s / (raw_mean / 128):.2f} x the raw rate of 128-token "
          "completions")


if __name__ == "__main__":
    main()
