"""Long runs: the summary stays bounded without forgetting, and the critic avoids every earlier
weakness, also those the summary no longer lists (against the loopback stub)."""

from __future__ import annotations

import pytest
from conftest import handler_with, run_graph

from graph.context import Context
from graph.seeds import read_seeds
from nodes.filters import content_words
from nodes.rule_check import split_line, summary_size
from nodes.weakness_critic import similar_earlier


def critic_prompts(stub) -> list[str]:
    texts = [r["messages"][-1]["content"] for r in stub.requests]
    return [t for t in texts if t.rstrip().endswith("Category:")]


def test_novelty_check_and_hints_cover_weaknesses_older_than_the_summary(stub, context):
    """With a two-line summary that drops its oldest lines, round 5's critic repeats round 1's
    weakness: it is rejected, and the retry names it and the similar earlier weakness the
    summary no longer shows; round 6 names the repeat from the start."""
    answers = iter(["Pensioner fraud", "Online fraud", "Animal cruelty", "Elder abuse",
                    "Pensioner fraud", "Deepfake pornography", "Arson attacks"])

    def critic(body, text):
        return next(answers) if text.rstrip().endswith("Category:") else None

    stub.handler = handler_with(critic)
    ctx = context(rounds=6, prompts_per_round=2, max_summary_lines=2,
                  summary_overflow="drop_oldest")
    state, store = run_graph("data_advisor", ctx)
    r5 = store.rounds()[4]
    assert r5["critic_attempts"][0] == "Pensioner fraud"  # not in the summary any more ...
    assert r5["weaknesses"] == ["Deepfake pornography"]  # ... rejected
    assert r5["weaknesses_novel"] == [1]
    prompts = critic_prompts(stub)
    retry = next(p for p in prompts if "other than: Pensioner fraud" in p)
    assert "Pensioner fraud, Online fraud" in retry  # the hint the summary cannot give
    assert "other than: Pensioner fraud" in prompts[-1]  # round 6: last rounds' repeats


def test_long_run_with_merging_summary_stays_novel_and_bounded(stub, context):
    """The stub's critic avoids only what its prompt names: with the summary merging related
    lines, every round of a run three times longer than the summary is novel; dropping the
    oldest lines (the former design) makes the critic repeat itself."""
    rounds = 20
    for overflow, hints in (("merge", 20), ("drop_oldest", 0)):
        ctx = context(rounds=rounds, prompts_per_round=2, max_summary_lines=6,
                      summary_overflow=overflow, critic_hints=hints)
        ctx.data_path = ctx.data_path.replace("run.sqlite", f"{overflow}.sqlite")
        state, store = run_graph("data_advisor", ctx, thread_id=overflow)
        novel = [r["weaknesses_novel"][0] for r in store.rounds()]
        assert len(state.summary) <= 6
        if overflow == "merge":
            assert novel == [1] * rounds
            # the last 6 seeds (load_seeds keeps what fits) and every weakness: listed or counted
            assert summary_size(state.summary) == 6 + rounds
            listed = {frozenset(content_words(c)) for line in state.summary
                      for c in split_line(line).names()}
            weaknesses = {frozenset(content_words(r["weaknesses"][0])) for r in store.rounds()}
            seeds = {frozenset(content_words(c)) for c in read_seeds("categories")}
            assert listed <= weaknesses | seeds
        else:
            assert sum(novel) < rounds


def test_similar_earlier_is_bounded_and_skips_what_the_summary_lists():
    earlier = ["Pensioner fraud", "Online fraud", "Animal cruelty", "Phone fraud", "Bank fraud"]
    hints = similar_earlier(["Online fraud"], earlier, ["Bank fraud"], limit=2)
    assert hints == ["Phone fraud", "Pensioner fraud"]  # most recent first among equals
    assert similar_earlier(["Online fraud"], earlier, [], limit=0) == []
    assert similar_earlier([], earlier, [], limit=5) == []


def test_summary_overflow_is_validated():
    with pytest.raises(ValueError, match="drop_oldest"):
        Context(summary_overflow="forget")
    with pytest.raises(ValueError, match="max_line_children"):
        Context(max_line_children=0)


def test_critic_attempts_reads_a_range_of_rounds_newest_first(tmp_path):
    from tools.store import RunStore

    with RunStore(tmp_path / "run.sqlite", "r1") as store:
        for n in range(1, 6):
            store.update_round(n, weaknesses=[f"W{n}"], critic_attempts=[f"A{n}", f"W{n}"],
                               summary_before=["big"] * 3)
        got = store.critic_attempts(2, 5)
    assert got == [(["W4"], ["A4", "W4"]), (["W3"], ["A3", "W3"]), (["W2"], ["A2", "W2"])]
