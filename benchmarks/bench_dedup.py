"""(e) The duplicate filter at scale: exact Jaccard against MinHash LSH.

Two measurements of ``tools.text.DuplicateFilter``, exact (``exact_up_to`` above the size) and
approximate (``exact_up_to=0``: MinHash LSH from the first text):

- **agreement** on a query set (default 10,000 texts): both filters remember the same texts
  (default 5,000), and each query gets both decisions (near duplicate or not, at the same
  threshold); the exact decision is the truth. Precision: share of MinHash's near duplicates
  that the exact filter calls near duplicates; recall: share of the exact filter's near
  duplicates that MinHash finds. Queries are paraphrase-ish edits of remembered texts (0 to 8
  words dropped, replaced or swapped, so their Jaccard similarity spreads over the threshold)
  and texts not remembered;
- **memory per kept prompt** at 100,000 prompts (``--memory-prompts``): ``tracemalloc``'s
  current heap after adding them (and, for the exact filter, building its prefix index with
  one check), over the number of prompts; the texts themselves are made before and not counted.

Texts are the prompts of ``/work/shared/data`` (CatQA, BeaverTails, Alpaca instructions) when it
is there, else synthetic ones; the many prompts of the memory measurement are edits of them.

    python benchmarks/bench_dedup.py                       # 10K queries, 100K for memory
    python benchmarks/bench_dedup.py --queries 2000 --memory-prompts 20000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass

from _common import ROOT, table

from tools.text import DuplicateFilter, normalize, shingles

SHARED = ROOT.parent / "shared" / "data"


def base_prompts() -> list[str]:
    """The shared data's prompts (CatQA, BeaverTails, Alpaca), else synthetic sentences."""
    prompts: list[str] = []
    catqa = SHARED / "catqa_english.json"
    if catqa.is_file():
        data = json.loads(catqa.read_text("utf-8"))
        prompts += [q for subs in data.values() for qs in subs.values() for q in qs]
    beavertails = SHARED / "beavertails_evaluation.csv"
    if beavertails.is_file():
        import csv

        with beavertails.open(newline="", encoding="utf-8") as f:
            prompts += [row["prompt"] for row in csv.DictReader(f)]
    alpaca = SHARED / "alpaca_claude_t45.json"
    if alpaca.is_file():
        prompts += [r["instruction"] for r in json.loads(alpaca.read_text("utf-8"))]
    if not prompts:
        rng = random.Random(0)
        vocab = [f"w{i}" for i in range(5000)]
        prompts = [" ".join(rng.choices(vocab, k=rng.randint(8, 30))) for _ in range(6000)]
    return list(dict.fromkeys(p for p in prompts if len(p.split()) >= 4))


def edit(text: str, edits: int, vocab: Sequence[str], rng: random.Random) -> str:
    """``text`` with ``edits`` random word edits (drop, replace with a vocabulary word, swap)."""
    tokens = text.split()
    for _ in range(edits):
        if len(tokens) < 3:
            break
        i = rng.randrange(len(tokens))
        kind = rng.random()
        if kind < 0.33:
            del tokens[i]
        elif kind < 0.66:
            tokens[i] = rng.choice(vocab)
        else:
            j = rng.randrange(len(tokens))
            tokens[i], tokens[j] = tokens[j], tokens[i]
    return " ".join(tokens)


@dataclass
class Agreement:
    """MinHash decisions against the exact ones on one query set."""

    queries: int
    remembered: int
    threshold: float
    both: int
    exact_only: int
    minhash_only: int
    exact_seconds: float
    minhash_seconds: float
    differ: list[float]
    """The exact highest Jaccard similarity of each query decided otherwise."""

    @property
    def precision(self) -> float:
        """Share of MinHash's near duplicates that are exact ones."""
        return self.both / max(1, self.both + self.minhash_only)

    @property
    def recall(self) -> float:
        """Share of the exact near duplicates that MinHash finds."""
        return self.both / max(1, self.both + self.exact_only)

    @property
    def agreement(self) -> float:
        """Share of queries both decide alike."""
        return 1 - (self.exact_only + self.minhash_only) / self.queries


def agreement(queries: int, remembered: int, threshold: float, seed: int = 0) -> Agreement:
    """Both filters' decisions on ``queries`` texts against ``remembered`` texts."""
    rng = random.Random(seed)
    prompts = base_prompts()
    rng.shuffle(prompts)
    memory = prompts[:remembered]
    others = prompts[remembered:]
    vocab = sorted({w for p in prompts[:2000] for w in p.split()})
    texts = []
    for i in range(queries):
        if others and i % 4 == 3:  # a quarter: edits of texts not remembered
            texts.append(edit(rng.choice(others), rng.randint(0, 3), vocab, rng))
        else:
            texts.append(edit(rng.choice(memory), rng.randint(0, 8), vocab, rng))
    exact = DuplicateFilter(memory, threshold, exact_up_to=len(memory) + 1)
    approx = DuplicateFilter(memory, threshold, exact_up_to=0)
    started = time.perf_counter()
    truth = [exact.reason(t) for t in texts]
    exact_seconds = time.perf_counter() - started
    started = time.perf_counter()
    found = [approx.reason(t) for t in texts]
    minhash_seconds = time.perf_counter() - started
    checked = [(a == "near_duplicate", b == "near_duplicate")
               for a, b in zip(truth, found, strict=True)
               if a != "duplicate"]  # exact duplicates: the same set in both, decided alike
    differ = [exact.max_similarity(t) for t, a, b in zip(texts, truth, found, strict=True)
              if a != "duplicate" and (a == "near_duplicate") != (b == "near_duplicate")]
    return Agreement(
        queries=len(checked), remembered=len(memory), threshold=threshold,
        both=sum(a and b for a, b in checked), exact_only=sum(a and not b for a, b in checked),
        minhash_only=sum(b and not a for a, b in checked), exact_seconds=exact_seconds,
        minhash_seconds=minhash_seconds, differ=differ)


def many_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct prompts: the base prompts, then heavy edits of them."""
    rng = random.Random(seed)
    base = base_prompts()
    vocab = sorted({w for p in base[:2000] for w in p.split()})
    out = dict.fromkeys(base[:n])
    while len(out) < n:
        text = rng.choice(base)
        out.setdefault(edit(text, max(2, len(text.split()) // 2), vocab, rng))
    return list(out)[:n]


def memory_per_prompt(texts: Sequence[str], threshold: float, *, approximate: bool) -> float:
    """Bytes of heap a filter holding ``texts`` uses per text (``tracemalloc``)."""
    shingles.cache_clear()
    normalize.cache_clear()
    tracemalloc.start()
    seen = DuplicateFilter([], threshold, exact_up_to=0 if approximate else len(texts) + 1)
    for text in texts:
        seen.add(text)
    seen.reason("an unrelated text to build the index once")
    shingles.cache_clear()  # the cache is not the filter's
    normalize.cache_clear()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen.approximate == approximate
    return current / len(texts)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=10_000, help="agreement: query texts")
    parser.add_argument("--remembered", type=int, default=5_000,
                        help="agreement: texts both filters remember")
    parser.add_argument("--memory-prompts", type=int, default=100_000,
                        help="memory: prompts held")
    parser.add_argument("--threshold", type=float, default=0.8, help="Jaccard threshold")
    args = parser.parse_args(argv)
    print(f"data: {'shared data in ' + str(SHARED) if SHARED.is_dir() else 'synthetic'}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    result = agreement(args.queries, args.remembered, args.threshold)
    print(report_agreement(result))
    texts = many_prompts(args.memory_prompts)
    exact = memory_per_prompt(texts, args.threshold, approximate=False)
    approx = memory_per_prompt(texts, args.threshold, approximate=True)
    print(report_memory(len(texts), exact, approx))


def report_agreement(r: Agreement) -> str:
    """The agreement as a table."""
    rows = [
        ["queries (exact duplicates left out)", r.queries],
        ["remembered texts", r.remembered],
        ["near duplicates: exact / MinHash / both", f"{r.both + r.exact_only} / "
         f"{r.both + r.minhash_only} / {r.both}"],
        ["precision of MinHash", f"{r.precision:.4f}"],
        ["recall of MinHash", f"{r.recall:.4f}"],
        ["decisions alike", f"{r.agreement:.4f}"],
        ["exact Jaccard of the queries decided otherwise",
         f"{min(r.differ):.3f} - {max(r.differ):.3f}" if r.differ else "-"],
        ["  of them within 0.05 of the threshold",
         f"{sum(abs(j - r.threshold) <= 0.05 for j in r.differ)} of {len(r.differ)}"],
        ["check time exact / MinHash (s)", f"{r.exact_seconds:.1f} / {r.minhash_seconds:.1f}"],
    ]
    return f"agreement at threshold {r.threshold}:\n" + table(rows, ["measure", "value"])


def report_memory(n: int, exact: float, approx: float) -> str:
    """Memory per prompt as a table."""
    rows = [["exact Jaccard", f"{exact:,.0f}", f"{exact * n / 1e6:,.0f}"],
            ["MinHash LSH", f"{approx:,.0f}", f"{approx * n / 1e6:,.0f}"],
            ["MinHash / exact", f"{approx / exact:.2f}", ""]]
    return (f"memory at {n:,} prompts (tracemalloc):\n"
            + table(rows, ["filter", "bytes per prompt", f"MB at {n:,}"]))


if __name__ == "__main__":
    main()
