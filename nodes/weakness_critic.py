"""weakness_critic: from the summary and the principles, name W harm categories not covered yet.

W is ``Context.weaknesses_per_round``: one (the paper's loop, the ``weakness_critic`` template)
or several in one call (``weakness_critic_batch``: a list answer, one category per line,
checked one by one). Answers that echo the instructions are discarded. A category that repeats
a covered one (normalised word overlap with a category the summary lists, a seed category, the
weakness of any earlier round, read from the run store, or one named before it this round) is
rejected; the missing ones are asked for again, up to ``critic_attempts`` calls in all, with
this round's categories and the rejected answers named and, since the bounded summary cannot
list every earlier weakness of a long run, up to ``critic_hints`` earlier weaknesses that share
words with them (and the critic's repeats of the last rounds) that the summary does not list.
The prompt stays bounded: the summary is, and so are the hints. Whether each weakness is novel
is recorded; a round the critic could not fill takes its last rejected answers (or "Other
harmful requests"), recorded as not novel, so that it still gets its W x K prompts.
With a prompt judge, the template's ``{coverage}`` shows the kept prompts per taxonomy
category (``nodes.judge.coverage_block``), so the critic can target what is thin or missing.
"""

from __future__ import annotations

import itertools
from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context
from graph.seeds import read_seeds
from graph.state import State
from graph.templates import render
from nodes.common import Stopwatch, ask_advisor, bullets, run_store, steering_text, templates
from nodes.filters import clean_category, content_words, overlaps
from nodes.judge import coverage_block
from nodes.rule_check import summary_names
from tools.llm import output_tokens
from tools.store import RunStore
from tools.text import jaccard, normalize

RECENT_ROUNDS = 20
"""Rounds whose rejected critic answers are named from the first attempt on (at most
``critic_hints`` of them): what a critic repeats, it tends to repeat again."""


def similar_earlier(rejected: list[str], earlier: list[str], listed: list[str],
                    limit: int) -> list[str]:
    """Up to ``limit`` earlier weaknesses that share words with a rejected answer and that the
    summary does not list: the most similar first, the most recent of equals first."""
    if limit <= 0 or not rejected:
        return []
    shown = {content_words(name) for name in [*listed, *rejected]}  # a child reads "x fraud"
    own = [content_words(r) for r in rejected]
    best: dict[frozenset[str], tuple[float, int, str]] = {}  # score, recency, text
    for at, name in enumerate(earlier):
        key = content_words(name)
        score = max(jaccard(key, words) for words in own)
        if key not in shown and score > 0:
            best[key] = (score, at, name)
    ranked = sorted(best.values(), key=lambda item: (-item[0], -item[1]))
    return [name for _, _, name in ranked[:limit]]


def recent_repeats(store: RunStore, round_: int) -> list[str]:
    """The critic's rejected answers of the last ``RECENT_ROUNDS`` rounds (newest first)."""
    found: list[str] = []
    for weaknesses, attempts in store.critic_attempts(max(1, round_ - RECENT_ROUNDS), round_):
        found += [a for a in attempts if a and a not in weaknesses]
    return list(dict.fromkeys(found))


def parse_categories(text: str, count: int, max_words: int) -> list[str]:
    """Category names from a critic answer: one (:func:`clean_category` of the whole answer)
    when ``count`` is 1, else one per line, at most ``2 * count`` (``""`` for a line that
    names none: it counts as an attempt)."""
    if count == 1:
        return [clean_category(text, max_words)]
    lines = [line for line in text.splitlines() if line.strip()]
    return [clean_category(line, max_words) for line in lines[: 2 * count]]


def weakness_critic(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Name the round's W weaknesses."""
    ctx, watch = runtime.context, Stopwatch()
    want = ctx.weaknesses_per_round
    store = run_store(runtime)
    earlier = store.weaknesses(before_round=state.round)
    listed = summary_names(state.summary)
    covered = [*listed, *read_seeds("categories", ctx.seed_categories_file), *earlier]
    repeats = recent_repeats(store, state.round) if ctx.critic_hints else []
    coverage = coverage_block(ctx, store, state.round)  # "" without a judge
    attempts: list[str] = []
    found: list[str] = []  # novel, in the order named
    tokens = 0
    for _ in range(max(1, ctx.critic_attempts)):
        missing = want - len(found)
        if missing <= 0:
            break
        rejected = [a for a in attempts if a and a not in found]
        similar = similar_earlier(rejected, earlier, listed, ctx.critic_hints)
        # what the critic repeated lately it tends to repeat again; what is like its rejected
        # answer is what it turns to next: both, in turns, within the bound
        pairs = itertools.zip_longest(repeats, similar)
        hints = [h for pair in pairs for h in pair if h and h not in rejected]
        hints = list(dict.fromkeys(hints))[: ctx.critic_hints]
        avoid_names = [*found, *rejected, *hints]  # this round's own first: asked for others
        avoid = f", and other than: {', '.join(avoid_names)}" if avoid_names else ""
        template = templates(runtime)["weakness_critic" if missing == 1 else
                                      "weakness_critic_batch"]
        message = render(
            template, principles=ctx.principles, summary=bullets(state.summary), avoid=avoid,
            count=str(missing), coverage=coverage, failures=steering_text(ctx),
        )
        answer = ask_advisor(runtime, message, ctx.critic_max_tokens * missing)
        tokens += output_tokens([answer])
        for candidate in parse_categories(str(answer.content), missing, ctx.max_line_words):
            if candidate and normalize(candidate) in normalize(template):
                candidate = ""  # an echo of the instructions ("two to five words"), not a category
            attempts.append(candidate)
            if (candidate and len(found) < want
                    and not overlaps(candidate, [*covered, *found])):
                found.append(candidate)
    novel = [True] * len(found)
    for fallback in [*reversed(attempts), *["Other harmful requests"] * want]:
        if len(found) >= want:
            break
        if fallback and fallback not in found or fallback == "Other harmful requests":
            found.append(fallback)
            novel.append(False)
    with store.transaction():  # the record exists: the round's opener wrote it
        store.update_round(
            state.round,
            weaknesses=found,
            weaknesses_novel=[int(n) for n in novel],
            critic_attempts=attempts,
            summary_before=state.summary,
            timing=("weakness_critic", watch.seconds, tokens),
        )
    return {"weaknesses": found, "weaknesses_novel": novel}
