"""One answer to "where does this run stand": ``status``, the experiment and ``resume`` agree
(issue 11, "one resume protocol"), and each round record names the nodes it needs."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_ok, kill_when, run_studio

from experiment.cli import main
from experiment.stages import _run_status
from graph.context import Context
from graph.runner import Run, create_run, execute
from testing.stub_server import StubServer
from tools.store import RunStore

METHODS = ["data_advisor", "self_instruct"]
FIRST_NODE = {"data_advisor": "weakness_critic", "self_instruct": "generator"}


def _run_id(folder: Path) -> str:
    return json.loads((folder / "run.json").read_text())["id"]


def _new(tmp_path: Path, stub: StubServer, method: str, **overrides: Any) -> Path:
    values: dict[str, Any] = {"base_url": stub.base_url, "model": "stub", "rounds": 2,
                              "prompts_per_round": 3, "max_retries": 0, **overrides}
    ctx = Context(**values)
    run = create_run(tmp_path / method, method, ctx, embedded=False)  # type: ignore[arg-type]
    return run.folder


def _finished(tmp_path: Path, stub: StubServer, method: str, **overrides: Any) -> Path:
    folder = _new(tmp_path, stub, method, **overrides)
    execute(Run.load(folder), resume=False, show_progress=False)
    return folder


def _status(folder: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    code = main(["status", str(folder), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def _drop_timing(folder: Path, round_: int, node: str) -> None:
    """The round's record as if ``node`` had not finished (its checkpoint may say otherwise)."""
    with RunStore(folder / "run.sqlite", _run_id(folder)) as store:
        record = store.get_round(round_)
        assert record and node in record["timings"]
        store.update_round(round_, timings={k: v for k, v in record["timings"].items()
                                            if k != node})


# --- the three phases, both methods --------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_a_created_run_is_not_started(tmp_path, stub, capsys, method):
    folder = _new(tmp_path, stub, method)
    status = _status(folder, capsys)
    assert (status["state"], status["round"], status["next"]) == ("not started", 0,
                                                                   ["load_seeds"])
    assert _run_status(folder) == "partial"  # run.json exists: the experiment resumes it
    assert _run_status(tmp_path / "nothing-here") == "new"


@pytest.mark.parametrize("method", METHODS)
def test_a_run_stopped_in_its_first_round_is_in_progress(tmp_path, stub, capsys, method):
    folder = _new(tmp_path, stub, method)
    stub.failures.append(400)  # the round's first call fails at once
    with pytest.raises(Exception, match="400"):
        execute(Run.load(folder), resume=False, show_progress=False)
    status = _status(folder, capsys)
    assert (status["state"], status["round"], status["next"]) == ("in progress", 1,
                                                                   [FIRST_NODE[method]])
    assert _run_status(folder) == "partial"


@pytest.mark.parametrize("method", METHODS)
def test_a_run_at_its_end_is_finished(tmp_path, stub, capsys, method):
    folder = _finished(tmp_path, stub, method)
    status = _status(folder, capsys)
    assert (status["state"], status["round"], status["next"]) == ("finished", 2, [])
    assert _run_status(folder) == "finished"


# --- the checkpoint says done, the store says the last round is not: in progress everywhere -----


@pytest.mark.parametrize("method", METHODS)
def test_a_checkpoint_at_its_end_with_an_unfinished_last_round_is_in_progress(
    tmp_path, stub, capsys, method
):
    """Before issue 11, ``status`` and the experiment said "finished" here (the checkpoint has
    no next step and the stopping rule holds) while ``resume`` ran round 2 again."""
    folder = _finished(tmp_path, stub, method)
    _drop_timing(folder, 2, "responder")
    status = _status(folder, capsys)
    assert (status["state"], status["round"], status["next"]) == ("in progress", 2,
                                                                   ["load_seeds"])
    assert status["rounds_done"] == 1
    assert _run_status(folder) == "partial"
    assert main(["history", str(folder), "--json"]) == 0
    assert [r["complete"] for r in json.loads(capsys.readouterr().out)] == [True, False]
    assert main(["history", str(folder)]) == 0
    assert capsys.readouterr().out.count("(in progress)") == 1
    before = len(stub.requests)
    assert main(["resume", str(folder), "--no-progress"]) == 0, capsys.readouterr().err
    assert "already finished" not in capsys.readouterr().err
    assert len(stub.requests) > before  # resume ran the round again
    with RunStore(folder / "run.sqlite", _run_id(folder)) as store:
        assert "responder" in store.get_round(2)["timings"]
        assert len(list(store.samples(with_response=True))) == 6
    assert _status(folder, capsys)["state"] == "finished"
    assert _run_status(folder) == "finished"


@pytest.mark.parametrize("method", METHODS)
def test_a_stepped_back_round_whose_rerun_failed_is_in_progress(tmp_path, stub, capsys, method):
    """Resume stepped round 2 back and its first call failed: the checkpoint is at round 1 with
    the round's first node pending; status, the experiment and the next resume agree."""
    folder = _finished(tmp_path, stub, method)
    _drop_timing(folder, 2, "responder")
    stub.failures.append(400)
    assert main(["resume", str(folder), "--no-progress"]) == 1
    status = _status(folder, capsys)
    assert (status["state"], status["round"], status["next"]) == ("in progress", 2,
                                                                   [FIRST_NODE[method]])
    assert _run_status(folder) == "partial"
    assert main(["resume", str(folder), "--no-progress"]) == 0, capsys.readouterr().err
    assert _status(folder, capsys)["state"] == "finished"


def test_status_of_a_studio_thread_is_as_before(tmp_path, stub, capsys):
    """A Studio thread's folder has no checkpoints here: status says so, from the store."""

    from graph.context import StudioContext

    ctx = StudioContext(base_url=stub.base_url, model="stub", rounds=2, prompts_per_round=3,
                        runs_dir=str(tmp_path / "runs"))
    run_studio(ctx, "thread-b")
    status = _status(tmp_path / "runs" / "thread-b", capsys)
    assert status["state"] == "Studio thread (checkpoints kept by the LangGraph server)"
    assert (status["next"], status["rounds_done"], status["prompts"]) == ([], 2, 6)
    with RunStore(tmp_path / "runs" / "thread-b" / "run.sqlite", "thread-b") as store:
        assert [r["nodes"] for r in store.rounds()] == [
            ["weakness_critic", "generator", "summarizer", "rule_check", "responder"]] * 2


# --- the round nodes: declared once, recorded when a round opens ---------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_the_declared_round_nodes_are_the_graphs_own(method):
    from graph.graph import ROUND_NODES, compile_graph

    nodes = set(compile_graph(method).get_graph().nodes) - {"__start__", "__end__"}
    assert set(ROUND_NODES[method]) == nodes - {"load_seeds"}


@pytest.mark.parametrize(("method", "rule_check", "expected"), [
    ("data_advisor", True, ["weakness_critic", "generator", "summarizer", "rule_check",
                            "responder"]),
    ("data_advisor", False, ["weakness_critic", "generator", "summarizer", "responder"]),
    ("self_instruct", True, ["generator", "responder"]),
])
def test_each_round_records_the_nodes_it_needs(tmp_path, stub, method, rule_check, expected):
    folder = _finished(tmp_path, stub, method, rule_check=rule_check)
    with RunStore(folder / "run.sqlite", _run_id(folder)) as store:
        assert [r["nodes"] for r in store.rounds()] == [expected, expected]


def test_with_the_rule_check_off_a_round_without_it_is_finished(tmp_path, stub, capsys):
    folder = _finished(tmp_path, stub, "data_advisor", rule_check=False)
    assert _status(folder, capsys)["state"] == "finished"
    _drop_timing(folder, 2, "summarizer")
    assert _status(folder, capsys)["state"] == "in progress"


@pytest.mark.parametrize(("method", "node"), [("data_advisor", "rule_check"),
                                              ("self_instruct", "responder")])
def test_a_record_from_before_the_nodes_field_uses_the_old_table(tmp_path, stub, capsys,
                                                                  method, node):
    folder = _finished(tmp_path, stub, method)
    with RunStore(folder / "run.sqlite", _run_id(folder)) as store:
        store.db.execute("update rounds set nodes = null")
        store.db.conn.commit()
    assert _status(folder, capsys)["state"] == "finished"
    _drop_timing(folder, 2, node)
    assert _status(folder, capsys)["state"] == "in progress"
    assert main(["resume", str(folder), "--no-progress"]) == 0, capsys.readouterr().err
    with RunStore(folder / "run.sqlite", _run_id(folder)) as store:
        assert node in store.get_round(2)["timings"]
        assert store.get_round(2)["nodes"]  # the round opened again records its nodes
    assert _status(folder, capsys)["state"] == "finished"


def test_an_old_store_file_gets_the_nodes_column(tmp_path):
    path = tmp_path / "run.sqlite"
    with sqlite3.connect(path) as conn:  # the rounds table as files before issue 11 have it
        conn.execute("create table rounds (run_id text, round integer, method text, "
                     "timings text, started_at float, finished_at float, "
                     "primary key (run_id, round))")
        conn.execute("insert into rounds values ('r', 1, 'self_instruct', "
                     "'{\"generator\": 1, \"responder\": 1}', 1.0, 2.0)")
    conn.close()
    with RunStore(path, "r") as store:
        assert {"nodes", "ended_at"} <= store.db.table("rounds").columns_dict.keys()
        assert store.get_round(1)["nodes"] is None
        store.start_round(2, "self_instruct", nodes=["generator", "responder"])
        assert store.get_round(2)["nodes"] == ["generator", "responder"]


def test_a_step_whose_checkpoint_was_not_saved_is_pending(tmp_path, stub, capsys):
    """Killed after the summarizer and the responder of the last round saved their writes but
    before their step's checkpoint (LangGraph's ``next`` is then empty): status shows that step
    as pending, as resume treats it (it applies the writes, asks nothing again)."""
    folder = _finished(tmp_path, stub, "data_advisor")
    conn = sqlite3.connect(folder / "checkpoints.sqlite")
    ids = [row[0] for row in conn.execute("select checkpoint_id from checkpoints order by 1")]
    conn.execute("delete from checkpoints where checkpoint_id >= ?", [ids[-2]])
    conn.commit()
    conn.close()
    status = _status(folder, capsys)
    assert (status["state"], status["round"]) == ("in progress", 2)
    assert sorted(status["next"]) == ["responder", "summarizer"]
    assert _run_status(folder) == "partial"
    before = len(stub.requests)
    assert main(["resume", str(folder), "--no-progress"]) == 0, capsys.readouterr().err
    assert len(stub.requests) == before
    assert _status(folder, capsys)["state"] == "finished"


def _open_round(db: Path, after: int) -> int | None:
    """A round past ``after`` whose prompts are written and whose responder has not finished."""
    try:
        with closing(sqlite3.connect(db, timeout=5)) as conn:
            row = conn.execute("select round from rounds where finished_at is null and round > ? "
                               "and kept is not null", [after]).fetchone()
    except sqlite3.OperationalError:  # not created yet
        return None
    return row[0] if row else None


def _kill_in_a_round(args: list[str], db: Path, after: int) -> int:
    """Run the command and SIGKILL it in the middle of a round past ``after``; that round."""
    return kill_when(args, lambda: _open_round(db, after), f"a round past {after} was open")


def test_a_resume_killed_too_is_resumed_the_same_way(tmp_path):
    """Killed mid-round, its resume killed mid-round too: the next resume finishes the run
    with every round once and no prompt lost or duplicated; status and the experiment agree."""
    folder = tmp_path / "r"
    db = folder / "run.sqlite"
    with StubServer(latency=0.1) as stub:
        first = _kill_in_a_round(["run", "--base-url", stub.base_url, "--model", "stub",
                                  "--rounds", "5", "-k", "3", "--run", str(folder),
                                  "--no-progress"], db, after=1)
        assert _run_status(folder) == "partial"
        second = _kill_in_a_round(["resume", str(folder), "--no-progress"], db, after=first)
        assert _run_status(folder) == "partial"
        cli_ok("resume", str(folder), "--no-progress", timeout=120)
    assert first < second
    with RunStore(db, _run_id(folder)) as store:
        rounds, samples = store.rounds(), list(store.samples())
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    assert all(r["finished_at"] and set(r["nodes"]) <= set(r["timings"]) for r in rounds)
    assert len(samples) == len({s["id"] for s in samples}) == 15
    assert all(s["response"] for s in samples)
    assert _run_status(folder) == "finished"
