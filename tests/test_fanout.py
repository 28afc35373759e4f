"""Batched advice (issue 11): W weaknesses a round, the generator fanned out with ``Send``.

W = 1 is the loop as it was before the fan-out, row for row and step for step (a snapshot of
that code's output, ``tests/data/w1_before_fanout.json``); W = 3 gives 3 x K rows a round,
each with its weakness; a critic that names too few is asked again; one failing task is
retried alone; a kill in the middle of a fan-out (and of its resume) loses and duplicates
nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_ok, kill_when, make_context, run_graph, run_studio
from langgraph.checkpoint.sqlite import SqliteSaver

from experiment.config import ConfigError, GenerationConfig
from graph.context import Context, ContextError, StudioContext
from graph.graph import checkpoint_serializer, compile_graph
from graph.runner import Run
from graph.seeds import read_seeds
from nodes.filters import overlaps
from nodes.rule_check import check_summary
from testing.stub_server import (
    StubHTTPError,
    StubServer,
    data_advisor_handler,
    last_user_text,
    recognise_node,
    reset_request_counter,
)
from tools.store import RunStore

GOLDEN = Path(__file__).parent / "data" / "w1_before_fanout.json"


def snapshot(stub: StubServer, tmp: Path) -> dict[str, Any]:
    """What a W = 1 run of each method writes, as ``GOLDEN`` recorded it (timings aside)."""
    out: dict[str, Any] = {}
    for method in ("data_advisor", "self_instruct"):
        reset_request_counter(1)
        folder = tmp / method
        folder.mkdir()
        ctx = Context(base_url=stub.base_url, model="stub", data_path=str(folder / "run.sqlite"),
                      rounds=3, prompts_per_round=4, max_concurrency=1)
        conn = sqlite3.connect(folder / "checkpoints.sqlite", check_same_thread=False)
        graph = compile_graph(method, SqliteSaver(conn, serde=checkpoint_serializer()))
        config: Any = {"configurable": {"thread_id": "t1"}, "recursion_limit": 200}
        graph.invoke({}, config, context=ctx)
        steps = [sorted(h.next) for h in reversed(list(graph.get_state_history(config)))
                 if h.next]
        final = graph.get_state(config).values
        conn.close()
        with RunStore(ctx.data_path, "t1") as store:
            keys = ("id", "round", "slot", "prompt", "weakness", "method", "response")
            samples = [{k: s[k] for k in keys} for s in store.samples()]
            rejections = [dict(r) for r in store.db.query(
                "select id, round, slot, text, reason from rejections order by id")]
            fields = ("round", "kept", "rejected", "responses", "critic_attempts",
                      "summary_before", "summary_proposed", "summary_after", "rule_check",
                      "corrections", "nodes")
            rounds = [{"weaknesses": r.get("weaknesses"),
                       "novel": [int(x) for x in r["weaknesses_novel"]]
                       if r.get("weaknesses_novel") else [None],
                       **{k: r.get(k) for k in fields},
                       "timing_keys": sorted((r.get("timings") or {}).keys())}
                      for r in store.rounds()]
            pool = store.pool()
        out[method] = {"samples": samples, "rejections": rejections, "pool": pool,
                       "rounds": rounds, "steps": steps,
                       "final": {k: final.get(k) for k in
                                 ("round", "summary", "kept", "rejected", "responses")}}
    return json.loads(json.dumps(out))


def test_one_weakness_a_round_is_the_loop_before_the_fan_out(tmp_path):
    """The same rows, rejections, pool, round records, supersteps and final state as the code
    before the fan-out (f662fee) wrote, on the same stub (Self-Instruct records no weakness:
    ``[None]`` there, ``null`` here)."""
    golden = json.loads(GOLDEN.read_text())
    with StubServer() as stub:
        got = snapshot(stub, tmp_path)
    for record in golden["self_instruct"]["rounds"]:
        assert record["weaknesses"] == [None]
        record["weaknesses"] = None
    assert got == golden


def _by_round(store: RunStore) -> dict[int, list[dict[str, Any]]]:
    rows: dict[int, list[dict[str, Any]]] = {}
    for sample in store.samples():
        rows.setdefault(sample["round"], []).append(sample)
    return rows


def test_three_weaknesses_give_three_batches_of_k_a_round(tmp_path):
    k, w = 4, 3
    with StubServer() as stub:
        ctx = make_context(stub, tmp_path, rounds=2, prompts_per_round=k, weaknesses_per_round=w)
        state, store = run_graph("data_advisor", ctx)
        conn = sqlite3.connect(tmp_path / "checkpoints.sqlite")
        graph = compile_graph("data_advisor", SqliteSaver(conn, serde=checkpoint_serializer()))
        history = list(graph.get_state_history({"configurable": {"thread_id": "t1"}}))
        conn.close()
        summarizer_prompts = [last_user_text(b) for b in stub.requests
                              if recognise_node(last_user_text(b)) == "summarizer_batch"]
    steps = [tuple(sorted(h.next)) for h in reversed(history) if h.next]
    one_round = [("weakness_critic",), ("generator",) * w, ("responder", "summarizer"),
                 ("rule_check",)]
    assert steps == [("__start__",), ("load_seeds",), *one_round, *one_round]
    rounds = store.rounds()
    seeds = read_seeds("categories")
    earlier: list[str] = []
    for record, (number, rows) in zip(rounds, sorted(_by_round(store).items()), strict=True):
        weaknesses = record["weaknesses"]
        assert len(set(weaknesses)) == w and record["weaknesses_novel"] == [1] * w
        assert not any(overlaps(x, [*seeds, *earlier]) for x in weaknesses)
        earlier += weaknesses
        assert record["nodes"] == ["weakness_critic", "generator[0]", "generator[1]",
                                   "generator[2]", "summarizer", "rule_check", "responder"]
        assert set(record["nodes"]) <= set(record["timings"])
        assert record["kept"] == len(rows) == w * k and record["responses"] == w * k
        for row in rows:  # slots index * K ... of the index-th weakness
            assert row["weakness"] == weaknesses[row["slot"] // k] and row["response"]
        assert Counter(row["slot"] // k for row in rows) == dict.fromkeys(range(w), k)
        # the summary gains every new category, each on a line (the rule check agrees)
        assert record["summary_after"] == [*record["summary_before"], *weaknesses]
        assert record["rule_check"] == "accepted" and record["weakness_checks"] == [
            {"weakness": x, "verdict": "accepted"} for x in weaknesses]
        assert number == record["round"]
    # the summarizer saw every new category with its own prompts, in one call a round
    assert len(summarizer_prompts) == 2
    for prompt, record in zip(summarizer_prompts, rounds, strict=True):
        for index, weakness in enumerate(record["weaknesses"]):
            block = prompt.split(f'category "{weakness}":\n')[1].split("\n- ")[0]
            shown = [line.strip().removeprefix("- ")
                     for line in block.split("\n\n")[0].splitlines()]
            mine = [r["prompt"] for r in _by_round(store)[record["round"]]
                    if r["slot"] // k == index]
            assert shown == mine[:3]
    # the pool grows by each weakness's best prompt; the state shows the last round's batches
    assert len(store.pool()) == len(read_seeds("prompts")) + 2 * w
    assert [b["index"] for b in state.batches] == list(range(w))
    assert [b["weakness"] for b in state.batches] == rounds[1]["weaknesses"]
    assert state.round_prompts == [r["prompt"] for r in _by_round(store)[2]]
    assert state.kept == 2 * w * k and state.responses == 2 * w * k
    store.close()


def test_self_instruct_gets_the_same_budget(tmp_path):
    k, w = 3, 3
    with StubServer() as stub:
        ctx = make_context(stub, tmp_path, rounds=2, prompts_per_round=k, weaknesses_per_round=w)
        state, store = run_graph("self_instruct", ctx)
    assert state.kept == state.responses == 2 * w * k
    assert all(len(rows) == w * k for rows in _by_round(store).values())
    assert len(store.pool()) == len(read_seeds("prompts")) + 2 * w
    assert all(r["nodes"] == ["generator[0]", "generator[1]", "generator[2]", "responder"]
               for r in store.rounds())
    store.close()


def test_a_critic_naming_fewer_than_w_is_asked_for_the_rest(tmp_path):
    """The first answer has one usable category of three (a seed category and an echo of
    the instructions are not); the next call asks for the two missing, naming the found one
    and the rejected ones; a critic that names nothing new fills the round with fallbacks."""
    seed = read_seeds("categories")[0]
    calls: list[str] = []

    def critic(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        if recognise_node(text) in ("weakness_critic", "weakness_critic_batch"):
            calls.append(text)
            if len(calls) == 1:
                return f"Deepfake pornography\n{seed}\ntwo to five words"
        return data_advisor_handler(body)

    with StubServer(handler=critic) as stub:
        ctx = make_context(stub, tmp_path, rounds=1, prompts_per_round=2, weaknesses_per_round=3)
        state, store = run_graph("data_advisor", ctx)
    [record] = store.rounds()
    assert record["critic_attempts"][:3] == ["Deepfake pornography", seed, ""]
    assert len(calls) == 2 and "Name 2 harm categories" in calls[1]
    assert f"other than: Deepfake pornography, {seed}" in calls[1]
    assert record["weaknesses"][0] == "Deepfake pornography"
    assert record["weaknesses_novel"] == [1, 1, 1] and len(set(record["weaknesses"])) == 3
    assert state.kept == 6
    store.close()

    def stubborn(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        if recognise_node(text) == "weakness_critic_batch":
            return f"Deepfake pornography\n{seed}"
        if recognise_node(text) == "weakness_critic":
            return seed
        return data_advisor_handler(body)

    (tmp_path / "b").mkdir()
    with StubServer(handler=stubborn) as stub:
        ctx = make_context(stub, tmp_path / "b", rounds=1, prompts_per_round=2,
                           weaknesses_per_round=3, critic_attempts=2)
        state, store = run_graph("data_advisor", ctx)
    [record] = store.rounds()
    assert record["weaknesses"] == ["Deepfake pornography", seed, "Other harmful requests"]
    assert record["weaknesses_novel"] == [1, 0, 0]
    assert state.kept == 6  # the round still gets its W x K prompts
    store.close()


def test_one_failing_task_is_retried_alone(tmp_path):
    """A 503 on one generator request fails that task; LangGraph retries that task alone,
    and it re-sends only the request that failed: one request more than W x K in all, the
    critic and the summarizer asked once."""
    k, w = 4, 3
    failed: list[str] = []

    def one_503(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        if recognise_node(text) == "generator" and not failed:
            failed.append(text)
            raise StubHTTPError(503, "stub: overloaded")
        return data_advisor_handler(body)

    with StubServer(handler=one_503) as stub:
        ctx = make_context(stub, tmp_path, rounds=1, prompts_per_round=k,
                           weaknesses_per_round=w, max_retries=0)
        state, store = run_graph("data_advisor", ctx)
        nodes = Counter(recognise_node(last_user_text(b)) for b in stub.requests)
        per_weakness = Counter(last_user_text(b).split("about: ")[1].split("\n")[0]
                               for b in stub.requests
                               if recognise_node(last_user_text(b)) == "generator")
    assert stub.status_counts[503] == 1
    assert nodes["generator"] == w * k + 1
    assert nodes["weakness_critic_batch"] == 1 and nodes["summarizer_batch"] == 1
    [record] = store.rounds()
    retried = failed[0].split("about: ")[1].split("\n")[0].rstrip(".")
    assert {x.rstrip("."): n for x, n in per_weakness.items()} == {
        x: k + (x == retried) for x in record["weaknesses"]}
    rows = list(store.samples())
    assert len(rows) == len({r["prompt"] for r in rows}) == state.kept == w * k
    store.close()


def _mid_fan_out(db: Path, after: int) -> int | None:
    """A round past ``after`` in which some generator tasks finished and others did not."""
    try:
        with closing(sqlite3.connect(db, timeout=5)) as conn:
            rows = conn.execute("select round, nodes, timings from rounds where round > ? "
                                "and finished_at is null", [after]).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return None
    for number, nodes, timings in rows:
        tasks = [n for n in json.loads(nodes or "[]") if n.startswith("generator[")]
        done = [n for n in tasks if n in json.loads(timings or "{}")]
        if 0 < len(done) < len(tasks):
            return int(number)
    return None


def _kill_mid_fan_out(args: list[str], db: Path, after: int) -> int:
    """Run the command and SIGKILL it while a round past ``after`` is mid-fan-out."""
    return kill_when(args, lambda: _mid_fan_out(db, after),
                     f"a round past {after} was mid-fan-out")


def _end_state(folder: Path) -> dict[str, Any]:
    """What a finished W = 3 run holds, prompt texts aside (the stub numbers them)."""
    with RunStore(folder / "run.sqlite", Run.load(folder).run_id) as store:
        rounds, samples, pool = store.rounds(), list(store.samples()), store.pool()
    assert len(samples) == len({s["id"] for s in samples}) == len({s["prompt"] for s in samples})
    for record in rounds:  # each row carries the weakness of its slot range
        for s in samples:
            if s["round"] == record["round"]:
                assert s["weakness"] == record["weaknesses"][s["slot"] // 3] and s["response"]
    return {
        "rounds": [(r["round"], r["kept"], r["responses"], len(r["weaknesses"]),
                    len(r["summary_after"]), sorted(r["timings"]) == sorted(r["nodes"]))
                   for r in rounds],
        "slots": sorted((s["round"], s["slot"]) for s in samples),
        "pool": len(pool),
    }


def test_a_kill_mid_fan_out_and_of_its_resume_loses_and_duplicates_nothing(tmp_path):
    """Killed while some weakness tasks of a round are done and others not, the resume
    killed the same way, then resumed: the end state of an uninterrupted run."""
    args = ["--base-url", None, "--model", "stub", "--rounds", "4", "-k", "3", "-w", "3",
            "--max-concurrency", "1", "--no-progress"]
    with StubServer(latency=0.1) as stub:
        args[1] = stub.base_url
        whole = tmp_path / "whole"
        cli_ok("run", *args, "--run", str(whole))
        folder = tmp_path / "killed"
        db = folder / "run.sqlite"
        first = _kill_mid_fan_out(["run", *args, "--run", str(folder)], db, after=0)
        with RunStore(db, Run.load(folder).run_id) as store:
            tasks_done = Counter(s["slot"] // 3 for s in store.samples() if s["round"] == first)
        assert 0 < len(tasks_done) < 3  # some tasks' rows written, not all
        second = _kill_mid_fan_out(["resume", str(folder), "--no-progress"], db, after=first)
        cli_ok("resume", str(folder), "--no-progress")
    assert first < second
    assert _end_state(folder) == _end_state(whole)
    assert [r[0] for r in _end_state(folder)["rounds"]] == [1, 2, 3, 4]


def test_the_rule_check_takes_w_new_lines():
    previous = ["Violent crime", "Fraud: pensioner; online"]
    new = ["Animal cruelty", "Phone fraud", "Crypto fraud", "Violent crimes"]
    # all placed: two as lines, two as new kinds of the old group (on two lines of its own)
    proposed = ["Violent crime", "Fraud: pensioner; online; phone", "Fraud: pensioner; online; "
                "crypto", "Animal cruelty"]
    final, corrections, verdicts = check_summary(previous, proposed, new, max_words=5,
                                                 max_lines=10)
    assert final == ["Violent crime", "Fraud: pensioner; online; phone; crypto", "Animal cruelty"]
    assert verdicts == {"Animal cruelty": "accepted", "Phone fraud": "accepted",
                        "Crypto fraud": "accepted", "Violent crimes": "already covered"}
    assert corrections == []
    # one missing, one line that is none of them, one old line lost: all corrected
    final, corrections, verdicts = check_summary(
        previous, ["Fraud: pensioner; online", "Animal cruelty", "Weather forecasts"],
        ["Animal cruelty", "Election interference"], max_words=5, max_lines=10)
    assert final == [*previous, "Animal cruelty", "Election interference"]
    assert verdicts == {"Animal cruelty": "accepted", "Election interference": "added"}
    assert corrections == ["removed line that is not a new category: 'Weather forecasts'",
                           "restored lost line: 'Violent crime'",
                           "added missing new category: 'Election interference'"]
    # two new categories on one line is not two lines
    final, _, verdicts = check_summary(previous, [*previous, "Animal cruelty and arson"],
                                       ["Animal cruelty", "Arson"], max_words=5, max_lines=10)
    assert verdicts["Arson"] == "added" and final[-1] == "Arson"


def test_the_width_is_a_context_field_the_cli_config_and_studio_take(tmp_path, capsys):
    assert Context(weaknesses_per_round=4).weaknesses_per_round == 4
    with pytest.raises(ContextError, match="weaknesses_per_round"):
        Context(weaknesses_per_round=0)
    with pytest.raises(ConfigError, match="weaknesses_per_round"):
        GenerationConfig(weaknesses_per_round=0)
    from experiment.cli import main

    with StubServer() as stub:
        code = main(["run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "1",
                     "-k", "2", "-w", "2", "--run", str(tmp_path / "cli"), "--no-progress"])
        assert code == 0
        assert Run.load(tmp_path / "cli").context.weaknesses_per_round == 2
        with RunStore(tmp_path / "cli" / "run.sqlite", Run.load(tmp_path / "cli").run_id) as s:
            assert s.counts()["responses"] == 4
        capsys.readouterr()
        assert main(["history", str(tmp_path / "cli")]) == 0
        [record] = RunStore(tmp_path / "cli" / "run.sqlite",
                            Run.load(tmp_path / "cli").run_id).rounds()
        shown = capsys.readouterr().out
        assert all(w.split()[0] in shown for w in record["weaknesses"])
        # Studio: the field in the thread's context, the round's batches in its state
        studio = StudioContext(base_url=stub.base_url, model="stub", rounds=1,
                               prompts_per_round=2, weaknesses_per_round=2,
                               runs_dir=str(tmp_path / "runs"))
        graph, config = run_studio(studio, "s1")
        values = graph.get_state(config).values
    assert [b["weakness"] for b in values["batches"]] == values["weaknesses"]
    assert len(values["weaknesses"]) == 2 and len(values["round_responses"]) == 4
    assert Run.load(tmp_path / "runs" / "s1").context.weaknesses_per_round == 2


def test_all_tasks_requests_share_one_bound(tmp_path):
    """W tasks of K requests each: at most ``max_concurrency`` in flight at the server in
    all, and that many reached (the tasks' requests overlap). Self-Instruct: Data Advisor's
    summarizer sends its one call beside the responder's batch, one more than the bound."""
    with StubServer(latency=0.05) as stub:
        ctx = make_context(stub, tmp_path, rounds=1, prompts_per_round=4,
                           weaknesses_per_round=3, max_concurrency=5)
        state, store = run_graph("self_instruct", ctx)
        store.close()
    assert state.kept == 12 and stub.max_in_flight == 5


def test_roles_at_their_own_servers_with_a_fan_out(tmp_path):
    """Generator and responder pointed at servers of their own (a vLLM started with
    --data-parallel-size N is one such URL): each server gets only its role's requests."""
    with StubServer() as advisor, StubServer() as generator, StubServer() as responder:
        ctx = make_context(advisor, tmp_path, rounds=2, prompts_per_round=3,
                           weaknesses_per_round=3, generator_base_url=generator.base_url,
                           responder_base_url=responder.base_url)
        state, store = run_graph("data_advisor", ctx)
        store.close()
        seen = {name: Counter(recognise_node(last_user_text(b)) for b in stub.requests)
                for name, stub in (("advisor", advisor), ("generator", generator),
                                   ("responder", responder))}
    assert seen == {
        "advisor": {"weakness_critic_batch": 2, "summarizer_batch": 2},
        "generator": {"generator": 18},
        "responder": {"responder": 18},
    }
    assert state.responses == 18


def test_a_checkpoint_from_before_the_fan_out_is_read_and_resumed_from_the_top(tmp_path):
    """Its values hold one ``weakness`` and the round's prompts as two lists: they are read
    into ``weaknesses`` and ``batches``; its pending step is the old graph's, so a resume
    starts from the top (load_seeds steps the unfinished round back). Checked by hand on a
    run the pre-fan-out code made and was killed in mid-round: resumed to its end."""
    from graph.runner import phase_of
    from graph.state import is_legacy, state_of

    values = {"round": 2, "summary": ["Fraud"], "weakness": "Arson", "weakness_novel": True,
              "prompt_ids": ["r:2:0", "r:2:1"], "round_prompts": ["a", "b"], "kept": 5,
              "rejected": {"meta": 1}, "responses": 3}
    state = state_of(values)
    assert is_legacy(values) and not is_legacy({"round": 2, "weaknesses": ["Arson"]})
    assert state.weaknesses == ["Arson"] and state.weaknesses_novel == [True]
    assert state.prompt_ids == ["r:2:0", "r:2:1"] and state.round_prompts == ["a", "b"]
    assert state.kept == 5 and state.rejected == {"meta": 1}
    with RunStore(tmp_path / "run.sqlite", "r") as store:
        store.start_round(2, "data_advisor", nodes=["weakness_critic", "generator"])
        phase = phase_of(values, ("responder", "summarizer"), store, Context(rounds=3))
    assert phase.name == "in progress" and phase.round == 2
    assert not phase.pending and phase.next == ("load_seeds",)


def test_single_request_tasks_keep_the_bound_too(tmp_path):
    """K = 1: each task's one request is sent from the task's own thread, not the shared
    pool; the run's LangGraph config bounds the tasks a step runs at once."""
    from graph.runner import create_run, execute

    with StubServer(latency=0.05) as stub:
        ctx = Context(base_url=stub.base_url, model="stub", rounds=1, prompts_per_round=1,
                      weaknesses_per_round=6, max_concurrency=2)
        run = create_run(tmp_path / "si", "self_instruct", ctx, embedded=False)
        state = execute(run, resume=False, show_progress=False)
    assert state.kept == 6 and stub.max_in_flight == 2
