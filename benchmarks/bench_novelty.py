"""(d) Weakness novelty over a long run: today's summary design against the merging one.

Each design is a Data Advisor run folder created as the CLI does (``graph.runner.create_run``),
streamed with the runner's SQLite checkpointer against the loopback stub server with no
latency. The stub answers every node as usual (``testing.stub_server.data_advisor_handler``)
except the weakness critic, which is :class:`UniverseCritic`: it draws harm categories from a
universe of 2,000 ``parent: child`` categories (80 parents x 25 kinds, ``Pensioner fraud``), in
a fixed order of preference (seeded), and avoids only the categories it can see in the prompt
it receives, as a real model would: a category is seen when both its words are named together
on a summary line (``Pensioner fraud``, or ``Fraud: pensioner; online``) or in the "other
than" list. It answers one of the first three categories it does not see (chosen by a hash of
the prompt: deterministic, like a model at a temperature).

Designs (``--designs``, comma-separated):

- ``today``: ``summary_overflow="drop_oldest"``, ``critic_hints=0``: the summary keeps its last
  ``max_summary_lines`` lines, the critic is shown its rejected answers only (the former code);
- ``merge``: merging summary, no hints;
- ``new``: merging summary and ``critic_hints=20`` (the defaults).

Printed per design: novel weaknesses per 100 rounds (the app's own verdict, ``weaknesses_novel``,
against every earlier weakness in the run store), distinct weaknesses, critic calls per round,
the summary's size and the critic prompt's length at the end, and the round time at the end
over the round time at round 10 (median of rounds 6 - 15 against the median of the last 10
rounds; target <= 1.5) with the near-duplicate filter's candidates per check.

    python benchmarks/bench_novelty.py --rounds 1000
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import table

from graph.context import Context
from graph.graph import compile_graph
from graph.runner import checkpointer, create_run
from nodes import generator as generator_node
from nodes.filters import content_words
from nodes.rule_check import summary_size
from testing.stub_server import (
    CATEGORY_MARKER,
    StubServer,
    data_advisor_handler,
    last_user_text,
    reset_request_counter,
)
from tools.store import RunStore

PARENTS = (
    "fraud stalking smuggling poaching piracy bribery extortion arson kidnapping trafficking "
    "forgery embezzlement vandalism espionage sabotage blackmail hazing doxxing swatting "
    "grooming counterfeiting looting burglary carjacking shoplifting poisoning laundering "
    "racketeering gambling cheating plagiarism impersonation sextortion catfishing scalping "
    "phishing spoofing skimming jamming tampering rigging collusion cartels sweatshops "
    "dumping deforestation overfishing cruelty neglect abduction radicalization propaganda "
    "incitement defamation libel slander trolling brigading spamming botnets ransomware "
    "cryptojacking keylogging wiretapping eavesdropping snooping voyeurism exploitation "
    "coercion intimidation bullying rioting looters squatting trespassing jaywalking "
    "littering bootlegging moonshining hoarding gouging"
).split()[:80]
KINDS = (
    "pensioner teenage workplace maritime rural campus prison hospital church airport "
    "military corporate cyber sports wedding charity festival tourist migrant farmland "
    "casino subway harbor embassy stadium"
).split()
DESIGNS = {
    "today": {"summary_overflow": "drop_oldest", "critic_hints": 0},
    "merge": {"summary_overflow": "merge", "critic_hints": 0},
    "new": {"summary_overflow": "merge", "critic_hints": 20},
}
HEADER = "The dataset already covers these harm categories:"


def universe(seed: int = 0) -> list[str]:
    """The 2,000 categories ``Kind parent``, in the critic's order of preference."""
    names = [f"{kind.capitalize()} {parent}" for parent in PARENTS for kind in KINDS]
    random.Random(seed).shuffle(names)
    return names


def seen_items(prompt: str) -> list[frozenset[str]]:
    """Word sets of what the critic prompt names: summary lines (a group's children each with
    its parent's words) and the "other than" list."""
    items: list[frozenset[str]] = []
    at = prompt.find(HEADER)
    for raw in prompt[at + len(HEADER):].split("\n")[1:] if at >= 0 else []:
        if not raw.strip():
            break
        line = raw.strip().removeprefix("- ")
        label, sep, rest = line.partition(":")
        if sep and ";" in rest:
            items += [content_words(label) | content_words(child) for child in rest.split(";")]
        else:
            items.append(content_words(line))
    if "other than:" in prompt:
        avoid = prompt.split("other than:", 1)[1].split(". Answer", 1)[0]
        items += [content_words(part) for part in avoid.split(",")]
    return items


@dataclass
class UniverseCritic:
    """The stub's handler with a critic that sees only its prompt (see the module doc)."""

    names: list[str] = field(default_factory=universe)
    choices: int = 3

    def __post_init__(self) -> None:
        self._words = [content_words(n) for n in self.names]

    def answer(self, prompt: str) -> str:
        """One of the first ``choices`` categories of the universe the prompt does not name."""
        # a category (two words) is named when both its words are in one item: index the
        # items' word pairs, so a check is a set look-up (the stub shares the app's CPU)
        named = {frozenset(pair) for item in seen_items(prompt)
                 for pair in itertools.combinations(sorted(item), 2)}
        unseen = []
        for name, own in zip(self.names, self._words, strict=True):
            if own not in named:
                unseen.append(name)
                if len(unseen) == self.choices:
                    break
        if not unseen:
            return "Unnamed harm"
        pick = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % len(unseen)
        return unseen[pick]

    def __call__(self, body: dict[str, Any]) -> str:
        text = last_user_text(body).rstrip()
        if text.endswith(CATEGORY_MARKER):
            return self.answer(text)
        return data_advisor_handler(body)


@dataclass
class NoveltyResult:
    """One design's run."""

    design: str
    novel: list[int] = field(default_factory=list)
    """Per round, 1 if the weakness was novel."""
    weaknesses: list[str] = field(default_factory=list)
    critic_calls: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    node_seconds: list[dict[str, float]] = field(default_factory=list)
    """Per round, the nodes' wall times (the round records' ``timings``)."""
    candidates: list[float] = field(default_factory=list)
    """Per round, near-duplicate candidates compared per check of a generated prompt."""
    summary: list[str] = field(default_factory=list)
    prompt_words: list[int] = field(default_factory=list)
    """Per critic request, the words of its prompt."""
    wall_s: float = 0.0


def measure(design: str, rounds: int, k: int, workdir: Path | None = None,
            progress_every: int = 0, **context: Any) -> NoveltyResult:
    """Run one design for ``rounds`` rounds and collect its per-round figures."""
    reset_request_counter()
    critic = UniverseCritic()
    result = NoveltyResult(design)
    prompt_words: list[int] = []

    def handler(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        if text.rstrip().endswith(CATEGORY_MARKER):
            prompt_words.append(len(text.split()))
        return critic(body)

    with tempfile.TemporaryDirectory(prefix="bench-novelty-", dir=workdir) as tmp, \
            StubServer(handler=handler) as stub:
        ctx = Context(base_url=stub.base_url, model="stub", rounds=rounds, prompts_per_round=k,
                      request_timeout=60.0, **{**DESIGNS[design], **context})
        run = create_run(Path(tmp) / design, "data_advisor", ctx, embedded=False)
        with checkpointer(run) as saver:
            graph = compile_graph(run.method, saver)
            started = last = time.perf_counter()
            compared = checks = 0
            for update in graph.stream({}, run.config(), context=run.context,
                                       stream_mode="updates"):
                if "rule_check" not in update:  # the last step of a round
                    continue
                now = time.perf_counter()
                result.seconds.append(now - last)
                known = [f for _, _, f in generator_node._KNOWN.values()]  # the kept filter
                total = sum(f.compared for f in known), sum(f.checks for f in known)
                result.candidates.append((total[0] - compared) / max(1, total[1] - checks))
                compared, checks = total
                stub.requests.clear()
                stub.headers.clear()
                if progress_every and len(result.seconds) % progress_every == 0:
                    print(f"  {design} round {len(result.seconds)}: {now - started:.0f} s, "
                          f"round {result.seconds[-1]:.3f} s", flush=True)
                last = time.perf_counter()
            result.wall_s = time.perf_counter() - started
            state = graph.get_state(run.config()).values
        with RunStore(run.db_path, run.run_id) as store:
            records = store.rounds()
    result.novel = [int(n) for r in records for n in r.get("weaknesses_novel") or [0]]
    result.weaknesses = [w for r in records for w in r.get("weaknesses") or [""]]
    result.critic_calls = [len(r.get("critic_attempts") or []) for r in records]
    result.node_seconds = [r.get("timings") or {} for r in records]
    result.summary = list(state.get("summary") or [])
    result.prompt_words = prompt_words
    return result


def round_time_ratio(seconds: list[float]) -> float:
    """Median of the last 10 rounds over the median of rounds 6 - 15."""
    early, late = seconds[5:15] or seconds[:1], seconds[-10:]
    return statistics.median(late) / statistics.median(early)


def report(results: list[NoveltyResult], k: int) -> str:
    """Novelty per 100 rounds side by side, then one line of figures per design."""
    rounds = max(len(r.novel) for r in results)
    rows = []
    for lo in range(0, rounds, 100):
        rows.append([f"{lo + 1}-{min(lo + 100, rounds)}",
                     *[sum(r.novel[lo:lo + 100]) for r in results]])
    lines = [f"novel weaknesses per 100 rounds (K={k}, {rounds} rounds, load average "
             f"{os.getloadavg()[0]:.1f})",
             table(rows, ["rounds", *[r.design for r in results]]), ""]
    body = []
    for r in results:
        body.append([
            r.design, sum(r.novel), len(set(map(str.lower, r.weaknesses))),
            statistics.fmean(r.critic_calls[-100:]), len(r.summary), summary_size(r.summary),
            sum(len(line.split()) for line in r.summary), max(r.prompt_words[-300:]),
            statistics.median(r.seconds[5:15]), statistics.median(r.seconds[-10:]),
            round_time_ratio(r.seconds), statistics.fmean(r.candidates[5:15]),
            statistics.fmean(r.candidates[-10:]), r.wall_s,
        ])
    lines.append(table(body, [
        "design", "novel", "distinct", "critic calls/round (last 100)", "summary lines",
        "categories in summary", "summary words", "critic prompt words (max, end)",
        "round s @10", "round s @end", "end/10", "cand./check @10", "cand./check @end",
        "wall s"]))
    nodes = sorted({n for r in results for t in r.node_seconds for n in t})
    rows = [[node, *[statistics.median([t.get(node, 0.0) for t in ts]) for r in results
                     for ts in (r.node_seconds[5:15], r.node_seconds[-10:])]] for node in nodes]
    lines += ["", "node wall time, s (median of rounds 6-15 and of the last 10)",
              table(rows, ["node", *[f"{r.design} {at}" for r in results
                                     for at in ("@10", "@end")]])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("-k", type=int, default=10, help="prompts per round")
    parser.add_argument("--designs", default="today,new",
                        help=f"comma-separated, of {', '.join(DESIGNS)}")
    parser.add_argument("--line-children", type=int, default=Context().max_line_children,
                        help="max_line_children of the run (default: the app's)")
    parser.add_argument("--progress", type=int, default=100, metavar="N",
                        help="print a line every N rounds (0: never)")
    args = parser.parse_args(argv)
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    if unknown := [d for d in designs if d not in DESIGNS]:
        parser.error(f"unknown design(s) {', '.join(unknown)}; choose from {', '.join(DESIGNS)}")
    if args.rounds < 20:
        parser.error("--rounds must be at least 20 (round 10 is the time reference)")
    results = [measure(d, args.rounds, args.k, progress_every=args.progress,
                       max_line_children=args.line_children) for d in designs]
    print(report(results, args.k))


if __name__ == "__main__":
    main()
