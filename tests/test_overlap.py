"""Answers in the background (``Context.overlap_responses``, issue 11): a round's prompts are
answered while the next rounds run; the data is the same as the paper's loop, the last round's
responder answers whatever is left, a kill and resume loses and duplicates nothing, and a
background batch that fails for good stops the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import cli_ok, handler_with, kill_when, make_context, run_graph, run_studio

from graph.runner import Run
from testing.stub_server import StubHTTPError, StubServer, recognise_node, reset_request_counter
from tools.llm import EndpointError
from tools.store import RunStore


def _rows(store: RunStore) -> list[tuple[Any, ...]]:
    return [(s["round"], s["slot"], s["prompt"], s["weakness"], s["response"])
            for s in store.samples()]


@pytest.mark.parametrize("method", ["data_advisor", "self_instruct"])
def test_the_same_data_as_the_paper_s_loop(tmp_path: Path, method: str) -> None:
    """Same prompts, weaknesses and responses, every prompt answered, every round's count of
    responses right, as with each round answered before the next."""
    out = {}
    with StubServer() as stub:
        for overlap in (False, True):
            reset_request_counter(1)
            folder = tmp_path / f"overlap-{overlap}"
            folder.mkdir()
            ctx = make_context(stub, folder, rounds=4, prompts_per_round=3,
                               max_concurrency=1, overlap_responses=overlap)
            final, store = run_graph(method, ctx)
            with store:
                out[overlap] = (_rows(store), [(r["round"], r["kept"], r["responses"])
                                               for r in store.rounds()],
                                final.kept, final.responses)
    assert out[True] == out[False]
    rows, rounds, kept, responses = out[True]
    assert all(row[-1] for row in rows) and kept == responses == len(rows) > 0
    assert [r[0] for r in rounds] == [1, 2, 3, 4]


def _order(stub: StubServer, prompts_of_round_1: set[str]) -> tuple[int, int]:
    """(index of the last request answering a round-1 prompt, index of round 2's critic)."""
    answering = [i for i, b in enumerate(stub.requests)
                 if b["messages"][-1]["content"] in prompts_of_round_1
                 and b["messages"][0]["role"] == "system"]
    critics = [i for i, b in enumerate(stub.requests)
               if recognise_node(b["messages"][-1]["content"]) == "weakness_critic"]
    return max(answering), critics[1]


def test_the_next_round_starts_while_the_round_is_answered(tmp_path: Path) -> None:
    """With overlap, round 2's critic is asked before round 1's last answer is; without it,
    after (the order of the requests the server received)."""
    seen = {}
    for overlap in (False, True):
        with StubServer(latency=0.15) as stub:
            folder = tmp_path / f"overlap-{overlap}"
            folder.mkdir()
            ctx = make_context(stub, folder, rounds=2, prompts_per_round=12, max_concurrency=2,
                               overlap_responses=overlap)
            _, store = run_graph("data_advisor", ctx)
            with store:
                first = {s["prompt"] for s in store.samples() if s["round"] == 1}
                assert all(s["response"] for s in store.samples())
            seen[overlap] = _order(stub, first)
    last_answer, critic = seen[False]
    assert last_answer < critic
    last_answer, critic = seen[True]
    assert critic < last_answer


def _handed_off_unanswered(db: Path) -> int | None:
    """A round whose responder has handed off while some of its prompts are unanswered."""
    import json
    import sqlite3
    from contextlib import closing

    if not db.exists():
        return None
    try:
        with closing(sqlite3.connect(db, timeout=0.05)) as conn:
            rounds = conn.execute("select round, timings from rounds").fetchall()
            open_ = {r for (r,) in conn.execute(
                "select distinct round from samples where response is null")}
    except sqlite3.Error:
        return None
    for number, timings in rounds:
        if "responder" in json.loads(timings or "{}") and number in open_ and number >= 2:
            return int(number)
    return None


def test_a_kill_while_answers_are_in_the_background_loses_nothing(tmp_path: Path) -> None:
    """Killed after a round handed its prompts off, before they were all answered; resumed:
    every prompt answered once, the rows and counts of an uninterrupted run."""
    args = ["--base-url", "", "--model", "stub", "--rounds", "5", "-k", "4",
            "--max-concurrency", "1", "--no-progress", "--overlap-responses"]

    def end(folder: Path) -> tuple[Any, ...]:
        with RunStore(folder / "run.sqlite", Run.load(folder).run_id) as store:
            samples = list(store.samples())
            assert all(s["response"] for s in samples)
            return (sorted((s["round"], s["slot"]) for s in samples),
                    [(r["round"], r["kept"], r["responses"]) for r in store.rounds()])

    with StubServer(latency=0.05) as stub:
        args[1] = stub.base_url
        whole = tmp_path / "whole"
        cli_ok("run", *args, "--run", str(whole))
        folder = tmp_path / "killed"
        killed_in = kill_when(["run", *args, "--run", str(folder)],
                              lambda: _handed_off_unanswered(folder / "run.sqlite"),
                              "a round was handed off unanswered")
        assert killed_in >= 2
        cli_ok("resume", str(folder), "--no-progress")
    assert end(folder) == end(whole)


def test_a_background_batch_that_fails_for_good_stops_the_run(tmp_path: Path) -> None:
    """Round 1's answers fail (HTTP 400) in the background: the next hand-off stops the run
    with that error; with the server mended a resume answers everything."""
    failing = {"on": True}

    def answers(body: dict[str, Any], text: str) -> str | None:
        if failing["on"] and body["messages"][0]["role"] == "system" and "(case " in text:
            raise StubHTTPError(400, "stub: no answers today")
        return None

    with StubServer(handler=handler_with(answers)) as stub:
        ctx = make_context(stub, tmp_path, rounds=4, prompts_per_round=2, max_concurrency=1,
                           overlap_responses=True)
        with pytest.raises(EndpointError, match="no answers today"):
            run_graph("data_advisor", ctx)
        with RunStore(ctx.data_path, "t1") as store:  # stopped by round 2's hand-off
            assert [r["round"] for r in store.rounds()] == [1, 2]
        failing["on"] = False
        run_graph("data_advisor", ctx)  # a start from the top: the resume protocol
    with RunStore(ctx.data_path, "t1") as store:
        samples = list(store.samples())
        assert [r["round"] for r in store.rounds()] == [1, 2, 3, 4]
    assert samples and all(s["response"] for s in samples)


def test_the_cli_the_config_and_studio_take_it(tmp_path: Path) -> None:

    from experiment.cli import main
    from experiment.config import load_config
    from graph.context import StudioContext

    base = {"training": {"instructions": "x.json"}, "evaluation": {"catqa": "c.json"}}
    assert not load_config(base).generation.overlap_responses
    assert load_config({**base, "generation": {"overlap_responses": True}}).generation \
        .overlap_responses
    with StubServer() as stub:
        assert main(["run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "2",
                     "-k", "2", "--overlap-responses", "--run", str(tmp_path / "cli"),
                     "--no-progress"]) == 0
        run = Run.load(tmp_path / "cli")
        assert run.context.overlap_responses
        with RunStore(run.db_path, run.run_id) as store:
            assert store.counts()["responses"] == store.counts()["prompts"] == 4
        studio = StudioContext(base_url=stub.base_url, model="stub", rounds=2,
                               prompts_per_round=2, overlap_responses=True,
                               runs_dir=str(tmp_path / "runs"))
        graph, config = run_studio(studio, "s1", "self_instruct")
        final = graph.get_state(config).values
    assert final["responses"] == final["kept"] == 4
