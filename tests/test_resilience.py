"""Resume after a kill, retries on transient errors, clear errors, and no secret on disk."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_graph

from experiment.cli import main
from graph.context import Context
from graph.runner import Run, create_run, execute
from testing.stub_server import StubServer, recognise_node
from tools.llm import EndpointError
from tools.store import RunStore


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiment.cli", *args]


def _round_in_progress(db: Path) -> int | None:
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(db, timeout=5)
        rows = conn.execute(
            "select round from rounds where finished_at is null and round >= 2 and kept is not null"
        ).fetchall()
        conn.close()
    except sqlite3.OperationalError:
        return None
    return rows[0][0] if rows else None


def _rounds_of(samples: list[dict]) -> dict[int, int]:
    return {r: sum(1 for s in samples if s["round"] == r) for r in {s["round"] for s in samples}}


def test_resume_after_kill_mid_round(tmp_path):
    run = tmp_path / "r"
    with StubServer(latency=0.15) as stub:
        proc = subprocess.Popen(
            _cli(
                "run",
                "--base-url",
                stub.base_url,
                "--model",
                "stub",
                "--rounds",
                "5",
                "-k",
                "4",
                "--run",
                str(run),
                "--no-progress",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        killed_in = None
        while time.time() < deadline and proc.poll() is None:
            killed_in = _round_in_progress(run / "run.sqlite")
            if killed_in:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(30)
        assert killed_in, proc.stdout.read().decode() if proc.stdout else ""
        with RunStore(run / "run.sqlite", Run.load(run).run_id) as store:
            before = list(store.samples())
        # the round's prompts were written
        assert any(s["round"] == killed_in for s in before), (killed_in, _rounds_of(before))

        done = subprocess.run(
            _cli("resume", str(run), "--no-progress"), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    with RunStore(run / "run.sqlite", Run.load(run).run_id) as store:
        samples = list(store.samples())
        rounds = store.rounds()
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5], done.stderr
    assert all(r["finished_at"] for r in rounds), (
        killed_in,
        [(r["round"], r["finished_at"], r["responses"], r["kept"], r["timings"]) for r in rounds],
        done.stdout,
        done.stderr,
    )
    assert len(samples) == 20 and len({s["id"] for s in samples}) == 20
    assert len({s["prompt"] for s in samples}) == 20
    assert all(s["response"] for s in samples), (killed_in, samples)
    for r in rounds:
        assert sum(1 for s in samples if s["round"] == r["round"]) == 4
    # the rounds finished before the kill were not redone
    kept_before = {s["id"]: s["prompt"] for s in before if s["round"] < killed_in}
    after = {s["id"]: s["prompt"] for s in samples}
    assert all(after.get(i) == p for i, p in kept_before.items()), (killed_in, kept_before, after)
    status = subprocess.run(_cli("status", str(run), "--json"), capture_output=True, text=True)
    assert '"finished"' in status.stdout


@pytest.mark.parametrize("method", ["data_advisor", "self_instruct"])
def test_restart_without_a_pending_step_runs_an_unfinished_round_again(tmp_path, stub, method):
    """A checkpoint with no pending step while the round in it did not finish (its responder's
    record is missing here): resume steps that round back and runs it again, then stops."""
    ctx = Context(base_url=stub.base_url, model="stub", rounds=2, prompts_per_round=3)
    run = create_run(tmp_path / "r", method, ctx, embedded=False)
    execute(run, resume=False, show_progress=False)
    with RunStore(run.db_path, run.run_id) as store:
        record = store.get_round(2)
        timings = {k: v for k, v in record["timings"].items() if k != "responder"}
        store.update_round(2, timings=timings)
        store.db.execute("update samples set response = null where round = 2")
    state = execute(run, resume=True, show_progress=False)
    assert state.round == 2
    with RunStore(run.db_path, run.run_id) as store:
        assert [r["round"] for r in store.rounds()] == [1, 2]
        assert "responder" in store.get_round(2)["timings"]
        samples = list(store.samples())
        assert len(samples) == 6 and all(s["response"] for s in samples)
    # a finished run stays finished
    before = len(stub.requests)
    execute(run, resume=True, show_progress=False)
    assert len(stub.requests) == before


def test_resume_applies_writes_of_a_step_whose_checkpoint_was_not_saved(tmp_path, stub):
    """Killed after the summarizer and the responder finished but before the checkpoint of their
    step was saved: no step shows as pending, and resume goes on from their saved writes."""
    ctx = Context(base_url=stub.base_url, model="stub", rounds=2, prompts_per_round=3)
    run = create_run(tmp_path / "r", "data_advisor", ctx, embedded=False)
    final = execute(run, resume=False, show_progress=False)
    conn = sqlite3.connect(run.checkpoint_path)
    ids = [row[0] for row in conn.execute("select checkpoint_id from checkpoints order by 1")]
    conn.execute("delete from checkpoints where checkpoint_id >= ?", [ids[-2]])  # rule_check's
    conn.commit()
    conn.close()
    before = len(stub.requests)
    state = execute(run, resume=True, show_progress=False)
    assert len(stub.requests) == before  # nothing asked again: the writes were applied
    assert state.summary == final.summary and state.round == 2 and state.responses == 6


def test_transient_errors_are_retried(context, stub):
    stub.failures.extend([503, 429, 502])
    state, _ = run_graph("data_advisor", context(rounds=1))
    assert state.kept == 4 and state.responses == 4
    assert stub.status_counts.get(503) == 1 and stub.status_counts.get(429) == 1


def test_client_error_fails_at_once_with_a_clear_message(context, stub):
    stub.failures.append(400)
    with pytest.raises(EndpointError, match="advisor endpoint .* 400"):
        run_graph("data_advisor", context(rounds=1))
    assert len(stub.requests) == 1  # no retry of a 4xx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_endpoint_gives_a_clear_error(tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    code = main(
        [
            "run",
            "--base-url",
            url,
            "--rounds",
            "1",
            "--run",
            str(tmp_path / "dead"),
            "--no-progress",
        ]
    )
    assert code == 1
    out = capsys.readouterr().err
    assert "cannot reach the advisor endpoint" in out and url in out
    assert "resume" in out


def test_bad_input_fails_before_any_llm_call(tmp_path, stub, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "generator.txt").write_text(
        "Examples: {examples}. Write a request about {weakness} {oops}"
    )
    code = main(
        [
            "run",
            "--base-url",
            stub.base_url,
            "--rounds",
            "1",
            "--prompts",
            str(prompts),
            "--run",
            str(tmp_path / "bad"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "unknown placeholder(s) {oops}" in capsys.readouterr().err
    assert stub.requests == []
    code = main(
        [
            "run",
            "--base-url",
            stub.base_url,
            "--seed-prompts",
            str(tmp_path / "nope.txt"),
            "--run",
            str(tmp_path / "bad2"),
            "--no-progress",
        ]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "bad2").exists()


def test_api_key_never_reaches_disk(tmp_path, stub, monkeypatch):
    canary = "sk-canary-4b1d0c7e9f"
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    run = tmp_path / "secret"
    assert (
        main(
            [
                "run",
                "--base-url",
                stub.base_url,
                "--model",
                "stub",
                "--rounds",
                "2",
                "-k",
                "3",
                "--run",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["export", str(run)]) == 0
    assert any(h.get("authorization") == f"Bearer {canary}" for h in stub.headers)
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {"run.sqlite", "checkpoints.sqlite"} <= {p.name for p in files}
    for path in files:
        assert canary.encode() not in path.read_bytes(), path
    del os.environ["OPENAI_API_KEY"]


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path):
    run = tmp_path / "int"
    with StubServer(latency=0.2) as stub:
        proc = subprocess.Popen(
            _cli("run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "4",
                 "-k", "3", "--run", str(run), "--no-progress"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline and not _round_in_progress(run / "run.sqlite"):
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "stopped" in stderr and f"data-advisor resume {run}" in stderr
        done = subprocess.run(_cli("resume", str(run), "--no-progress"), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    with RunStore(run / "run.sqlite", Run.load(run).run_id) as store:
        assert [r["round"] for r in store.rounds()] == [1, 2, 3, 4]
        assert len(list(store.samples(with_response=True))) == 12


def test_a_kill_mid_fan_out_stops_its_tasks_and_a_second_one_waits_quietly(tmp_path):
    """`kill` while W generator tasks send their requests: the tasks start no more requests
    (they end after the ones in flight, not after their batches); a second `kill` during that
    wait says the stop is under way instead of cutting it short (which left the tasks writing
    to a closed store and LangGraph scheduling on a shut-down executor: tracebacks after
    "stopped"). Then a resume finishes the run with every prompt answered once."""
    run = tmp_path / "term"
    with StubServer(latency=1.5) as stub:
        proc = subprocess.Popen(
            _cli("run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "3",
                 "-k", "6", "-w", "3", "--max-concurrency", "6", "--run", str(run),
                 "--no-progress"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline and not any(
                recognise_node(b["messages"][-1]["content"]) == "generator"
                for b in list(stub.requests)):
            time.sleep(0.02)
        time.sleep(0.3)  # the first wave of the tasks' requests is in flight
        asked = len(stub.requests)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        sent_after = len(stub.requests) - asked
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr and "Exception" not in stderr, stderr
        assert "stopping: waiting for the requests in flight" in stderr
        assert "stopped" in stderr and f"data-advisor resume {run}" in stderr
        assert sent_after == 0, f"{sent_after} requests started after the stop"
        done = subprocess.run(_cli("resume", str(run), "--no-progress"), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    with RunStore(run / "run.sqlite", Run.load(run).run_id) as store:
        samples = list(store.samples())
        assert [r["round"] for r in store.rounds()] == [1, 2, 3]
    assert len(samples) == len({s["prompt"] for s in samples}) and all(
        s["response"] for s in samples)
