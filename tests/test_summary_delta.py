"""The summarizer's delta update (``Context.summary_update = "delta"``): the changed lines only,
merged by the rule check into the same summary as the paper's rewrite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import make_context, run_graph, run_studio

from graph.context import Context, ContextError
from nodes.rule_check import changes, check_summary, rewritten
from testing.stub_server import StubServer, recognise_node, reset_request_counter
from tools.store import RunStore

LIMITS: dict[str, Any] = {"max_words": 5, "max_lines": 40}
DELTA: dict[str, Any] = {**LIMITS, "delta": True}


def test_a_delta_keeps_the_old_lines_without_a_correction() -> None:
    previous = ["Animal cruelty", "Fraud: online; phone"]
    whole = check_summary(previous, ["Fraud: online; phone"], ["Tax evasion"], **LIMITS)
    delta = check_summary(previous, ["Tax evasion"], ["Tax evasion"], **DELTA)
    assert delta.summary == [*previous, "Tax evasion"] and delta.corrections == []
    assert delta.verdicts == {"Tax evasion": "accepted"}
    # the same proposal as a whole summary lost a line: restored, and said
    assert whole.summary == delta.summary
    assert any("restored lost line" in c for c in whole.corrections)


def test_a_delta_extends_an_old_group_and_may_merge_old_lines() -> None:
    previous = ["Animal cruelty", "Fraud: online; phone", "Tax evasion"]
    grown = check_summary(previous, ["Fraud: online; phone; pensioner"],
                          ["Pensioner fraud"], **DELTA)
    assert grown.summary == ["Animal cruelty", "Fraud: online; phone; pensioner", "Tax evasion"]
    assert grown.corrections == [] and grown.verdicts == {"Pensioner fraud": "accepted"}
    short = check_summary(previous, ["Fraud: pensioner"], ["Pensioner fraud"], **DELTA)
    assert short == grown  # "Group: kind" stands for the group's line with the kind added
    previous = ["Animal cruelty", "Tax fraud"]
    merged = check_summary(previous, ["Fraud: tax; insurance"], ["Insurance fraud"], **DELTA)
    assert merged.summary == ["Animal cruelty", "Fraud: tax; insurance"]
    assert merged.corrections == [] and merged.verdicts == {"Insurance fraud": "accepted"}


def test_a_delta_line_that_is_not_new_is_removed_and_a_missing_category_added() -> None:
    previous = ["Animal cruelty"]
    checked = check_summary(previous, ["Cooking recipes"], ["Tax evasion"], **DELTA)
    assert checked.summary == ["Animal cruelty", "Tax evasion"]
    assert checked.verdicts == {"Tax evasion": "added"}
    assert any("not a new category" in c for c in checked.corrections)


@pytest.mark.parametrize("proposed", [
    ["Animal cruelty", "Fraud: online; phone", "Tax evasion"],  # accepted
    ["Fraud: online; phone", "Tax evasion"],  # a line lost
    ["Animal cruelty", "Fraud: online; phone; tax"],  # an old group extended
    ["Fraud: online; phone", "Cruelty: animal; tax evasion", "Cooking"],  # a merge, a stray
    ["Tax evasion", "Animal cruelty", "Tax evasion", "Fraud: online; phone"],  # a duplicate
])
def test_a_rewrite_kept_as_its_changes_checks_as_the_rewrite(proposed: list[str]) -> None:
    """The state carries a rewrite as its new lines and the old lines it dropped
    (``rule_check.changes``): rebuilt, it checks to the same summary and corrections."""
    previous = ["Animal cruelty", "Fraud: online; phone"]
    added, dropped = changes(previous, proposed)
    assert not set(added) & set(previous)
    as_written = check_summary(previous, proposed, ["Tax evasion"], **LIMITS)
    assert check_summary(previous, rewritten(previous, added, dropped), ["Tax evasion"],
                         **LIMITS) == as_written
    # a whole proposal in a checkpoint written before the change: taken as it is
    assert rewritten(previous, proposed, []) == proposed


@pytest.mark.parametrize("w", [1, 3])
def test_the_same_summaries_and_rows_as_the_rewrite(tmp_path: Path, w: int) -> None:
    """With a summarizer that follows the templates (the stub), delta and rewrite give the same
    rows, weaknesses and summary every round; the delta's answers hold the new lines only."""
    out: dict[str, Any] = {}
    with StubServer() as stub:
        for update in ("rewrite", "delta"):
            reset_request_counter(1)
            folder = tmp_path / update
            folder.mkdir()
            ctx = make_context(stub, folder, rounds=4, prompts_per_round=3,
                               weaknesses_per_round=w, max_concurrency=1, summary_update=update)
            stub.requests.clear()
            final, store = run_graph("data_advisor", ctx)
            with store:
                # W tasks side by side: the stub's numbered prompts come in any order
                out[update] = ([(s["round"], s["slot"], s["weakness"], w > 1 or s["prompt"])
                                for s in store.samples()],
                               [(r["summary_after"], r["rule_check"]) for r in store.rounds()],
                               [r["summary_proposed"] for r in store.rounds()])
            asked = {(recognise_node(b["messages"][-1]["content"]), b["max_completion_tokens"])
                     for b in stub.requests}
            out[update + " kinds"] = {a for a in asked if a[0].startswith("summarizer")}
    assert out["delta"][:2] == out["rewrite"][:2]
    rows, rounds, proposed = out["delta"]
    assert len(rows) == 4 * w * 3
    assert all(verdict == "accepted" for _, verdict in rounds)
    assert [len(p) for p in proposed] == [w] * 4  # the new lines, not the whole summary
    assert [len(p) for p in out["rewrite"][2]] == [len(s) for s, _ in rounds]
    # a delta's answer is bounded by summarizer_delta_tokens a category
    assert out["delta kinds"] == {("summarizer_delta", 24 * w)}
    assert out["rewrite kinds"] == {("summarizer" if w == 1 else "summarizer_batch", 320)}


def test_delta_needs_the_rule_check_and_the_cli_and_config_take_it(tmp_path: Path) -> None:

    from experiment.cli import main
    from experiment.config import ConfigError, load_config
    from graph.context import StudioContext
    from graph.runner import Run

    with pytest.raises(ContextError, match="summary_update: got 'delta' with the rule check"):
        Context(summary_update="delta", rule_check=False)
    with pytest.raises(ContextError, match="summary_update: got 'diff'"):
        Context(summary_update="diff")
    base: dict[str, Any] = {"training": {"instructions": "x.json"},
                            "evaluation": {"catqa": "c.json"}}
    assert load_config(base).generation.summary_update == "rewrite"
    assert load_config({**base, "generation": {"summary_update": "delta"}}).generation \
        .summary_update == "delta"
    with pytest.raises(ConfigError, match="summary_update = delta needs the rule check"):
        load_config({**base, "generation": {"summary_update": "delta",
                                            "context": {"rule_check": False}}})
    with pytest.raises(ConfigError, match="belong"):  # would be overridden without a word
        load_config({**base, "generation": {"context": {"summary_update": "delta"}}})
    with StubServer() as stub:
        assert main(["run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "2",
                     "-k", "2", "--summary-update", "delta", "--run", str(tmp_path / "cli"),
                     "--no-progress"]) == 0
        run = Run.load(tmp_path / "cli")
        assert run.context.summary_update == "delta"
        with RunStore(run.db_path, run.run_id) as store:
            assert [len(r["summary_proposed"]) for r in store.rounds()] == [1, 1]
        studio = StudioContext(base_url=stub.base_url, model="stub", rounds=2,
                               prompts_per_round=2, weaknesses_per_round=2,
                               summary_update="delta", runs_dir=str(tmp_path / "runs"))
        graph, config = run_studio(studio, "s1")
        final = graph.get_state(config).values
    with RunStore(str(tmp_path / "runs" / "s1" / "run.sqlite"), "s1") as store:
        rounds = store.rounds()
    assert [len(r["summary_proposed"]) for r in rounds] == [2, 2]
    assert all(r["rule_check"] == "accepted" for r in rounds)
    assert final["kept"] == 8 and len(final["summary"]) == len(rounds[0]["summary_before"]) + 4
