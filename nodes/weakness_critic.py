"""weakness_critic: from the summary and the principles, name one harm category not covered yet.

Answers that echo the instructions are discarded. If the answer repeats a covered category
(normalised word overlap with a category the summary lists, a seed category, or the weakness of
any earlier round, read from the run store), the critic is asked again, up to
``critic_attempts`` times, with the rejected answers named and, since the bounded summary cannot
list every earlier weakness of a long run, up to ``critic_hints`` earlier weaknesses that share
words with them (and the critic's repeats of the last rounds) that the summary does not list.
The prompt stays bounded: the summary is, and so are the hints. Whether the final weakness is
novel is recorded.
"""

from __future__ import annotations

import itertools
from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context
from graph.seeds import read_seeds
from graph.state import State
from graph.templates import render
from nodes.common import Stopwatch, ask_advisor, bullets, run_store, templates
from nodes.filters import clean_category, content_words, overlaps
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
    for weakness, attempts in store.critic_attempts(max(1, round_ - RECENT_ROUNDS), round_):
        found += [a for a in attempts if a and a != weakness]
    return list(dict.fromkeys(found))


def weakness_critic(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Name the round's weakness."""
    ctx, watch = runtime.context, Stopwatch()
    template = templates(runtime)["weakness_critic"]
    store = run_store(runtime)
    earlier = store.weaknesses(before_round=state.round)
    listed = summary_names(state.summary)
    covered = [*listed, *read_seeds("categories", ctx.seed_categories_file), *earlier]
    repeats = recent_repeats(store, state.round) if ctx.critic_hints else []
    attempts: list[str] = []
    tokens = 0
    weakness, novel = "", False
    for _ in range(max(1, ctx.critic_attempts)):
        named = [a for a in attempts if a]
        similar = similar_earlier(named, earlier, listed, ctx.critic_hints)
        # what the critic repeated lately it tends to repeat again; what is like its rejected
        # answer is what it turns to next: both, in turns, within the bound
        pairs = itertools.zip_longest(repeats, similar)
        hints = [h for pair in pairs for h in pair if h and h not in named]
        hints = list(dict.fromkeys(hints))[: ctx.critic_hints]
        avoid = f", and other than: {', '.join([*named, *hints])}" if named or hints else ""
        message = render(
            template, principles=ctx.principles, summary=bullets(state.summary), avoid=avoid
        )
        answer = ask_advisor(runtime, message, ctx.critic_max_tokens)
        tokens += output_tokens([answer])
        candidate = clean_category(str(answer.content), ctx.max_line_words)
        if candidate and normalize(candidate) in normalize(template):
            candidate = ""  # an echo of the instructions ("two to five words"), not a category
        attempts.append(candidate)
        if candidate and not overlaps(candidate, covered):
            weakness, novel = candidate, True
            break
    if not weakness:
        weakness = next((a for a in reversed(attempts) if a), "Other harmful requests")
    with store.transaction():  # the record exists: the round's opener wrote it
        store.update_round(
            state.round,
            weakness=weakness,
            weakness_novel=int(novel),
            critic_attempts=attempts,
            summary_before=state.summary,
            timing=("weakness_critic", watch.seconds, tokens),
        )
    return {"weakness": weakness, "weakness_novel": novel}
