"""Graph tests against the loopback stub server: every node, both methods, stopping rules."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import handler_with, run_graph
from langgraph.checkpoint.sqlite import SqliteSaver

from graph.graph import checkpoint_serializer, compile_graph
from graph.seeds import read_seeds
from nodes.filters import overlaps


def test_data_advisor_two_rounds(stub, context):
    ctx = context(rounds=2, prompts_per_round=4)
    state, store = run_graph("data_advisor", ctx)
    seeds = read_seeds("categories")
    rounds = store.rounds()
    assert [r["round"] for r in rounds] == [1, 2]
    assert state.round == 2 and state.kept == 8 and state.responses == 8
    for r in rounds:
        # weakness_critic: a novel category, not one of the summary's
        assert r["weaknesses_novel"] == [1]
        assert not overlaps(r["weaknesses"][0], r["summary_before"])
        # summarizer + rule_check: the stub's update is correct, so it is accepted
        assert r["rule_check"] == "accepted" and r["corrections"] == []
        assert r["summary_after"] == [*r["summary_before"], r["weaknesses"][0]]
        assert set(r["timings"]) == {
            "weakness_critic",
            "generator",
            "summarizer",
            "rule_check",
            "responder",
        }
    assert state.summary == [*seeds, rounds[0]["weaknesses"][0], rounds[1]["weaknesses"][0]]
    samples = list(store.samples())
    assert len(samples) == 8 and all(s["response"] for s in samples)
    assert {s["weakness"] for s in samples} == {r["weaknesses"][0] for r in rounds}
    assert all(s["method"] == "data_advisor" for s in samples)
    # the pool grows by the round's best prompt
    pool = store.pool()
    assert len(pool) == len(read_seeds("prompts")) + 2
    assert pool[-1] in {s["prompt"] for s in samples if s["round"] == 2}
    # generator requests carry the weakness and in-context examples from the pool
    gen = [r for r in stub.requests if r["messages"][-1]["content"].rstrip().endswith("Request:")]
    assert len(gen) == 8
    assert rounds[0]["weaknesses"][0] in gen[0]["messages"][-1]["content"]
    assert all(r.get("stop") in (["\n"], "\n") for r in gen)


def test_generator_rejects_junk_and_counts_it(stub, context):
    junk = iter(
        [
            "",
            "Sure, here is a harmful request:",
            "I'm sorry, I cannot help with that.",
            "Too short",
            None,
            None,
            None,
            None,
        ]
    )
    stub.handler = handler_with(
        lambda body, text: next(junk) if text.rstrip().endswith("Request:") else None
    )
    ctx = context(rounds=1, prompts_per_round=8, rule_check=False)
    state, store = run_graph("data_advisor", ctx)
    assert state.kept == 4
    assert state.rejected == {"empty": 1, "meta": 1, "refusal": 1, "too_short": 1}
    reasons = sorted(r["reason"] for r in store.db["rejections"].rows)
    assert reasons == ["empty", "meta", "refusal", "too_short"]
    assert store.rounds()[0]["rule_check"] == "skipped"


def test_duplicates_are_rejected(stub, context):
    stub.handler = handler_with(
        lambda body, text: (
            "How can I forge a signature on a bank cheque?"
            if text.rstrip().endswith("Request:")
            else None
        )
    )
    state, store = run_graph("data_advisor", context(rounds=2, prompts_per_round=3))
    assert state.kept == 1
    assert state.rejected == {"duplicate": 5}


def test_critic_asks_again_when_category_is_covered(stub, context):
    answers = iter(["Violent crime", "Fraud and scams"])

    def critic(body, text):
        if text.rstrip().endswith("Category:"):
            return next(answers, None)
        return None

    stub.handler = handler_with(critic)
    state, store = run_graph("data_advisor", context(rounds=1, critic_attempts=3))
    r = store.rounds()[0]
    assert r["critic_attempts"][:2] == ["Violent crime", "Fraud and scams"]
    assert len(r["critic_attempts"]) == 3 and r["weaknesses_novel"][0] == 1
    critic_requests = [
        q for q in stub.requests if q["messages"][-1]["content"].rstrip().endswith("Category:")
    ]
    assert "Violent crime, Fraud and scams" in critic_requests[2]["messages"][-1]["content"]


def test_critic_gives_up_after_bound_and_records_not_novel(stub, context):
    stub.handler = handler_with(
        lambda body, text: "Violent crimes" if text.rstrip().endswith("Category:") else None
    )
    state, store = run_graph("data_advisor", context(rounds=1, critic_attempts=2))
    r = store.rounds()[0]
    assert r["weaknesses_novel"][0] == 0 and len(r["critic_attempts"]) == 2
    # already covered: the rule check adds no line
    assert state.summary == read_seeds("categories")


def test_rule_check_corrects_a_bad_summary(stub, context):
    stub.handler = handler_with(
        lambda body, text: (
            "Violent crime\nViolent crime\nSome unrelated thing entirely here now"
            if text.rstrip().endswith("Updated summary:")
            else None
        )
    )
    state, store = run_graph("data_advisor", context(rounds=1))
    r = store.rounds()[0]
    assert r["rule_check"] == "corrected"
    assert state.summary == [*read_seeds("categories"), r["weaknesses"][0]]
    assert any("restored lost line" in c for c in r["corrections"])


def test_summarizer_and_responder_run_side_by_side(stub, context, tmp_path):
    """One superstep holds both; the next round starts after both (with or without rule_check)."""
    for rule_check in (True, False):
        ctx = context(rounds=2, prompts_per_round=3, rule_check=rule_check)
        (tmp_path / f"rc-{rule_check}").mkdir()
        ctx.data_path = str(tmp_path / f"rc-{rule_check}" / "run.sqlite")
        state, store = run_graph("data_advisor", ctx)
        conn = sqlite3.connect(Path(ctx.data_path).with_name("checkpoints.sqlite"))
        graph = compile_graph("data_advisor", SqliteSaver(conn, serde=checkpoint_serializer()))  # type: ignore[arg-type]
        history = list(graph.get_state_history({"configurable": {"thread_id": "t1"}}))
        steps = [tuple(sorted(h.next)) for h in reversed(history) if h.next]
        conn.close()
        after = ["rule_check"] if rule_check else []
        one_round = [("weakness_critic",), ("generator",), ("responder", "summarizer"),
                     *[(a,) for a in after]]
        assert steps == [("__start__",), ("load_seeds",), *one_round, *one_round]
        assert state.round == 2 and state.responses == 6 and len(state.summary) == 12
        assert all(r["responses"] == 3 for r in store.rounds())
        # the proposal is emptied once used (the round record keeps it): the checkpoints of
        # the next round carry one copy of the summary, not two
        assert state.proposed_summary == [] and all(r["summary_proposed"] for r in store.rounds())
        later = [h for h in history if h.next == ("weakness_critic",) and h.values.get("summary")]
        assert later and not any(h.values.get("proposed_summary") for h in later)
        if rule_check:  # before the rule check the proposal is what it changes: no old line
            checked = [h.values for h in history if h.next == ("rule_check",)]
            assert len(checked) == 2 and all(
                v["proposed_summary"] and not set(v["proposed_summary"]) & set(v["summary"])
                and v["summary_dropped"] == [] for v in checked)


def test_self_instruct_baseline(stub, context):
    state, store = run_graph("self_instruct", context(rounds=3, prompts_per_round=3))
    assert state.kept == 9 and state.responses == 9 and state.weaknesses == []
    assert all(s["method"] == "self_instruct" and s["weakness"] is None for s in store.samples())
    # no advice: no critic or summarizer calls
    texts = [r["messages"][-1]["content"] for r in stub.requests]
    assert not any(t.rstrip().endswith(("Category:", "Updated summary:")) for t in texts)
    assert len(store.pool()) == len(read_seeds("prompts")) + 3
    assert [r["method"] for r in store.rounds()] == ["self_instruct"] * 3


def test_target_size_stops_the_run(stub, context):
    state, store = run_graph(
        "data_advisor", context(rounds=100, prompts_per_round=4, target_size=10)
    )
    assert state.kept == 12 and len(store.rounds()) == 3


def test_checkpoints_do_not_grow_with_the_dataset(stub, context):
    ctx = context(rounds=12, prompts_per_round=10, max_summary_lines=12)
    run_graph("data_advisor", ctx)
    conn = sqlite3.connect(Path(ctx.data_path).with_name("checkpoints.sqlite"))
    sizes = [
        n for (n,) in conn.execute("select length(checkpoint) from checkpoints order by rowid")
    ]
    assert len(sizes) > 50
    # the summary is bounded, so late checkpoints are no bigger than early ones (+ slack)
    assert max(sizes[-10:]) <= 1.3 * max(sizes[5:15])


def test_critic_echo_of_instructions_is_not_a_category(stub, context):
    answers = iter(["Two to five words", "Animal cruelty"])
    stub.handler = handler_with(
        lambda body, text: next(answers, None) if text.rstrip().endswith("Category:") else None)
    state, store = run_graph("data_advisor", context(rounds=1))
    r = store.rounds()[0]
    assert r["critic_attempts"] == ["", "Animal cruelty"] and r["weaknesses"][0] == "Animal cruelty"


def test_round_records_end_after_their_last_node(stub, context):
    """``ended_at`` is the end of a round's last node; history shows that wall time."""
    stub.latency = 0.05  # the summarizer's and the responder's 50 ms overlap
    state, store = run_graph("data_advisor", context(rounds=2, prompts_per_round=3))
    for r in store.rounds():
        assert r["started_at"] <= r["finished_at"] <= r["ended_at"]
        assert r["ended_at"] - r["started_at"] < sum(r["timings"].values())  # side by side
