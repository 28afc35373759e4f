"""A run folder's identity and integrity: a stable id, atomic metadata, one process at a time,
store and checkpoint checked against each other, storage failures as one line (issue 9)."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_studio

from evaluation.data import load_prompts
from experiment.cli import main
from graph.context import STUDIO_FILE, Context
from graph.runner import create_run, execute
from testing.stub_server import StubServer
from tools.store import RunStore
from training.mix import load_safety


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiment.cli", *args]


def _run_id(folder: Path) -> str:
    """The key of a run's rows in its run.sqlite: run.json's id, else the folder name."""
    return json.loads((folder / "run.json").read_text()).get("id") or folder.name


def _finished(tmp_path: Path, stub: StubServer, name: str = "r", rounds: int = 3,
              method: str = "data_advisor") -> Path:
    """A finished run of ``rounds`` rounds of 3 prompts each; its folder."""
    ctx = Context(base_url=stub.base_url, model="stub", rounds=rounds, prompts_per_round=3)
    run = create_run(tmp_path / name, method, ctx, embedded=False)  # type: ignore[arg-type]
    execute(run, resume=False, show_progress=False)
    return run.folder


def _status(folder: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()  # what earlier commands printed
    code = main(["status", str(folder), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """The command's error: one line (after the run folder's line of `run`), no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("run folder: ")]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def _table(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# --- 1. a run's identity is its id, not its folder name ----------------------------------------


def test_a_renamed_run_is_the_same_run(tmp_path, stub, capsys):
    folder = _finished(tmp_path, stub)
    run_id = _run_id(folder)
    moved = folder.rename(tmp_path / "elsewhere")
    requests = len(stub.requests)
    status = _status(moved, capsys)
    assert status["state"] == "finished" and status["prompts"] == 9
    assert main(["export", str(moved), "--format", "jsonl"]) == 0
    assert "9 rows" in capsys.readouterr().out
    assert main(["resume", str(moved), "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().err
    assert len(stub.requests) == requests  # nothing generated again
    assert _table(moved / "run.sqlite", "select distinct run_id from samples") == [(run_id,)]
    assert len(load_safety(moved)) == 9  # train --safety
    assert len(load_prompts(moved)) == 9  # eval diversity / safety
    # the id is made at creation: the method and 12 hex digits, not the folder name
    assert status["id"] == run_id and run_id.startswith("data_advisor-") and len(run_id) == 25


def test_readers_take_only_the_runs_own_rows(tmp_path, stub):
    """A run.sqlite that also holds a copy under another id (a renamed run resumed by an older
    version): train --safety and eval read the run's rows only, as export does."""
    folder = _finished(tmp_path, stub)
    conn = sqlite3.connect(folder / "run.sqlite")
    conn.execute("insert into samples (id, run_id, round, slot, prompt, response) "
                 "select 'copy:' || id, 'copy', round, slot, prompt, response from samples")
    conn.commit()
    conn.close()
    assert len(load_safety(folder)) == 9 and len(load_prompts(folder)) == 9


def test_runs_made_before_ids_keep_their_folder_name(tmp_path, stub, capsys):
    # as an older version made it: keyed by its folder name, no id in run.json
    ctx = Context(base_url=stub.base_url, model="stub", rounds=2, prompts_per_round=3)
    run = create_run(tmp_path / "old", "data_advisor", ctx, embedded=False)
    run.run_id = "old"
    execute(run, resume=False, show_progress=False)
    folder = run.folder
    data = json.loads((folder / "run.json").read_text())
    data.pop("id", None)
    (folder / "run.json").write_text(json.dumps(data))
    status = _status(folder, capsys)
    assert (status["state"], status["prompts"], status["id"]) == ("finished", 6, "old")
    assert main(["export", str(folder), "--format", "jsonl"]) == 0
    assert "6 rows" in capsys.readouterr().out
    # renamed: a clear error, not a new run under the new name
    renamed = folder.rename(tmp_path / "renamed")
    requests = len(stub.requests)
    assert main(["resume", str(renamed), "--no-progress"]) == 2
    err = _error(capsys)
    assert "rename it back to old" in err and '"id": "old"' in err
    assert len(stub.requests) == requests
    # back under its name, resume records the id: from then on a rename changes nothing
    back = renamed.rename(tmp_path / "old")
    assert main(["resume", str(back), "--no-progress"]) == 0, capsys.readouterr().err
    assert json.loads((back / "run.json").read_text())["id"] == "old"
    assert _status(back.rename(tmp_path / "moved"), capsys)["prompts"] == 6


# --- 2. metadata is written atomically -----------------------------------------------------------


def test_a_crash_while_run_json_is_written_leaves_the_old_file(tmp_path, stub, monkeypatch):
    from graph.runner import Run

    folder = _finished(tmp_path, stub, rounds=1)
    before = (folder / "run.json").read_text()

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt  # killed between the write and the rename

    monkeypatch.setattr("tools.files.os.replace", crash)
    run = Run.load(folder)
    with pytest.raises(KeyboardInterrupt):
        run.change_endpoints({"base_url": "http://moved:8000/v1"})
    assert (folder / "run.json").read_text() == before
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_an_empty_run_json_is_a_clear_error_and_the_folder_can_start_again(tmp_path, stub,
                                                                          capsys):
    folder = tmp_path / "cut"
    folder.mkdir()
    (folder / "run.json").write_text("")  # an older version killed while writing it
    assert main(["resume", str(folder), "--no-progress"]) == 2
    err = _error(capsys)
    assert f"{folder / 'run.json'} is empty or not valid JSON" in err
    assert f"data-advisor run --run {folder}" in err
    args = ["run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "1", "-k", "2",
            "--run", str(folder), "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err  # no data yet: it starts
    assert len(load_safety(folder)) == 2


def test_an_empty_run_json_beside_data_is_not_started_again(tmp_path, stub, capsys):
    folder = _finished(tmp_path, stub, rounds=1)
    (folder / "run.json").write_text("")
    rows = _table(folder / "run.sqlite", "select * from samples")
    args = ["run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "1",
            "--run", str(folder), "--no-progress"]
    assert main(args) == 2
    assert "holds data, so it is not started again" in _error(capsys)
    assert _table(folder / "run.sqlite", "select * from samples") == rows


# --- 3. one process executes a run at a time ---------------------------------------------------


def _round_started(db: Path) -> bool:
    try:
        return bool(_table(db, "select 1 from rounds where kept is not null"))
    except sqlite3.Error:
        return False


def test_a_second_process_is_refused_while_a_run_executes(tmp_path, capsys):
    folder = tmp_path / "busy"
    with StubServer(latency=0.2) as stub:
        proc = subprocess.Popen(
            _cli("run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "4",
                 "-k", "3", "--run", str(folder), "--no-progress"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 60
            while time.time() < deadline and not _round_started(folder / "run.sqlite"):
                time.sleep(0.02)
            assert proc.poll() is None, proc.communicate()
            recorded = (folder / "run.json").read_text()
            assert main(["resume", str(folder), "--base-url", "http://other:8000/v1",
                         "--no-progress"]) == 2
            err = _error(capsys)
            assert f"{folder} is being executed by pid {proc.pid} on " in err
            assert "wait or stop it" in err
            assert (folder / "run.json").read_text() == recorded  # no endpoint changed under it
            assert _status(folder, capsys)["executed_by"].startswith(f"pid {proc.pid} on ")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
        assert main(["resume", str(folder), "--no-progress"]) == 0, capsys.readouterr().err
    assert len(load_safety(folder)) == 12
    assert _status(folder, capsys)["executed_by"] is None


def test_a_dead_holders_lock_is_taken_over(tmp_path, stub, capsys):
    folder = _finished(tmp_path, stub, rounds=1)
    (folder / "run.lock").write_text(
        json.dumps({"pid": 2**22 + 17, "host": "gone", "since": "2020-01-01T00:00:00+00:00"})
    )
    assert main(["resume", str(folder), "--no-progress"]) == 0, capsys.readouterr().err


# --- 4. the store and the checkpoint are checked against each other --------------------------


def test_a_truncated_store_under_a_finished_checkpoint_is_refused(tmp_path, stub, capsys):
    folder = _finished(tmp_path, stub)
    conn = sqlite3.connect(folder / "run.sqlite")
    for table in ("samples", "rounds"):
        conn.execute(f"delete from {table} where round >= 2")
    conn.commit()
    conn.close()
    requests = len(stub.requests)
    for command in (["status", str(folder)], ["resume", str(folder), "--no-progress"]):
        assert main(command) == 2
        err = _error(capsys)
        assert "run.sqlite holds 3 prompts for rounds 1-3 but the checkpoint has 9" in err
        assert "not finished in it: round(s) 2" in err
        assert "restore run.sqlite from a backup, or start a new run" in err
    assert len(stub.requests) == requests
    assert len(load_safety(folder)) == 3


def test_rows_lost_from_a_round_are_refused(tmp_path, stub, capsys):
    folder = _finished(tmp_path, stub)
    _table(folder / "run.sqlite", "select 1")  # the file is there
    conn = sqlite3.connect(folder / "run.sqlite")
    conn.execute("delete from samples where round = 2 and slot = (select min(slot) from "
                 "samples where round = 2)")
    conn.commit()
    conn.close()
    assert main(["resume", str(folder), "--no-progress"]) == 2
    assert "fewer rows than their records say: round(s) 2" in _error(capsys)


@pytest.mark.parametrize("how", ["emptied", "deleted"])
def test_lost_checkpoints_do_not_restart_the_run(tmp_path, stub, capsys, how):
    folder = _finished(tmp_path, stub)
    if how == "deleted":
        for path in folder.glob("checkpoints.sqlite*"):
            path.unlink()
    else:
        conn = sqlite3.connect(folder / "checkpoints.sqlite")
        conn.execute("delete from checkpoints")
        conn.execute("delete from writes")
        conn.commit()
        conn.close()
    rows = _table(folder / "run.sqlite", "select id, prompt, response from samples order by id")
    requests = len(stub.requests)
    for command in (["status", str(folder)], ["resume", str(folder), "--no-progress"]):
        assert main(command) == 2
        err = _error(capsys)
        assert "checkpoints.sqlite is at round 0" in err
        assert "holds 9 prompts of 3 finished rounds (1-3)" in err
        assert "restore checkpoints.sqlite from a backup" in err
    assert len(stub.requests) == requests
    assert _table(folder / "run.sqlite", "select id, prompt, response from samples order by id"
                  ) == rows


def test_a_stepped_back_round_is_not_counted_twice(tmp_path, stub, capsys):
    """A round whose responder's record is missing runs again: the counters stay those of the
    store, so the next status agrees with it."""
    folder = _finished(tmp_path, stub, rounds=2)
    with RunStore(folder / "run.sqlite", _run_id(folder)) as store:
        record = store.get_round(2)
        store.update_round(2, timings={k: v for k, v in record["timings"].items()
                                       if k != "responder"})
    assert main(["resume", str(folder), "--no-progress"]) == 0, capsys.readouterr().err
    assert "6 prompts kept, 6 answered" in capsys.readouterr().err
    assert _status(folder, capsys)["prompts"] == 6


def test_a_stop_right_after_a_round_is_stepped_back_is_not_taken_for_lost_checkpoints(
    tmp_path, stub, capsys
):
    """Killed during round 2's rule check (its responder had finished), then stopped again
    right after resume stepped the round back (the checkpoint says round 1, the store holds a
    round 2 with a finished responder): the next resume runs round 2 again, it does not report
    lost checkpoints."""
    folder = _finished(tmp_path, stub, rounds=2)
    with RunStore(folder / "run.sqlite", _run_id(folder)) as store:
        record = store.get_round(2)
        assert record["finished_at"] and "rule_check" in record["timings"]
        store.update_round(2, timings={k: v for k, v in record["timings"].items()
                                       if k != "rule_check"})
    stub.failures.append(400)  # the critic's first call after the step back fails at once
    assert main(["resume", str(folder), "--no-progress"]) == 1
    assert "400" in capsys.readouterr().err
    assert _status(folder, capsys)["state"] == "in progress"
    assert main(["resume", str(folder), "--no-progress"]) == 0, capsys.readouterr().err
    assert "6 prompts kept, 6 answered" in capsys.readouterr().err
    with RunStore(folder / "run.sqlite", _run_id(folder)) as store:
        assert "rule_check" in store.get_round(2)["timings"]
        assert len(list(store.samples())) == 6


# --- 5. storage failures are one line naming the file --------------------------------------------


@pytest.mark.parametrize("name", ["run.sqlite", "checkpoints.sqlite"])
def test_a_corrupt_sqlite_file_is_named(tmp_path, stub, capsys, name):
    folder = _finished(tmp_path, stub, rounds=1)
    for path in folder.glob(f"{name}-*"):
        path.unlink()  # the WAL of the file
    (folder / name).write_bytes(b"this is not a database" * 100)
    commands = [["status", str(folder)], ["resume", str(folder), "--no-progress"]]
    if name == "run.sqlite":
        commands += [["export", str(folder)], ["history", str(folder)]]
    for command in commands:
        assert main(command) == 2, command
        err = _error(capsys)
        assert f"{folder / name} is not a readable SQLite database" in err, command
        assert "restore it from a backup" in err
    assert (folder / name).read_bytes() == b"this is not a database" * 100


def test_a_read_only_store_is_one_line(tmp_path, stub, capsys, monkeypatch):
    ctx = Context(base_url=stub.base_url, model="stub", rounds=1, prompts_per_round=2)
    run = create_run(tmp_path / "ro", "data_advisor", ctx, embedded=False)
    connect = sqlite3.connect

    def read_only(path: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if str(path).endswith("run.sqlite"):  # as on a read-only folder (root ignores chmod)
            return connect(f"file:{path}?mode=ro", *args, uri=True, **kwargs)
        return connect(path, *args, **kwargs)

    (tmp_path / "ro" / "run.sqlite").touch()
    monkeypatch.setattr("tools.store.sqlite3.connect", read_only)
    assert main(["resume", str(run.folder), "--no-progress"]) == 2
    err = _error(capsys)
    assert f"cannot write {run.folder / 'run.sqlite'}" in err and "writable" in err


def test_a_read_only_folder_is_one_line(tmp_path, stub, capsys, monkeypatch):
    def denied(*args: Any, **kwargs: Any) -> Any:  # as in a read-only folder (root ignores chmod)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))

    monkeypatch.setattr("tools.files.tempfile.mkstemp", denied)
    folder = tmp_path / "ro"
    assert main(["run", "--base-url", stub.base_url, "--rounds", "1", "--run", str(folder),
                 "--no-progress"]) == 2
    err = _error(capsys)
    assert f"cannot write {folder / 'run.json'} (Permission denied)" in err
    assert "writable" in err and stub.requests == []


def test_a_full_disk_during_a_run_keeps_the_data(tmp_path, stub, capsys, monkeypatch):
    args = ["run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "3", "-k", "3",
            "--run", str(tmp_path / "full"), "--no-progress"]
    save_round = RunStore.save_round

    def full_in_round_2(self: RunStore, round_: int, *rest: Any, **kw: Any) -> Any:
        if round_ == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return save_round(self, round_, *rest, **kw)

    monkeypatch.setattr(RunStore, "save_round", full_in_round_2)
    assert main(args) == 2
    err = _error(capsys)
    assert "no space left to write" in err and "free some disk space" in err
    assert f"data-advisor resume {tmp_path / 'full'}" in err
    monkeypatch.setattr(RunStore, "save_round", save_round)
    assert len(load_safety(tmp_path / "full")) == 3  # round 1 is kept
    assert main(["resume", str(tmp_path / "full"), "--no-progress"]) == 0
    assert len(load_safety(tmp_path / "full")) == 9


def test_a_full_disk_while_run_json_is_written_keeps_it(tmp_path, stub, capsys, monkeypatch):
    folder = _finished(tmp_path, stub, rounds=1)
    before = (folder / "run.json").read_text()

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("tools.files.os.fsync", no_space)
    assert main(["resume", str(folder), "--base-url", "http://moved:8000/v1",
                 "--no-progress"]) == 2
    err = _error(capsys)
    assert f"no space left to write {folder / 'run.json'}" in err
    assert "free some disk space" in err
    assert (folder / "run.json").read_text() == before
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_an_unwritable_export_path_is_one_line(tmp_path, stub, capsys):
    folder = _finished(tmp_path, stub, rounds=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["export", str(folder), "--out", str(blocker / "export")]) == 2
    err = _error(capsys)
    assert f"cannot write {blocker / 'export'}" in err and "choose another path" in err
    assert main(["export", str(folder), "--out", str(blocker)]) == 2
    assert str(blocker) in _error(capsys)
    assert blocker.read_text() == "not a folder"


# --- Studio thread folders ---------------------------------------------------------------------


def test_status_of_a_studio_thread(tmp_path, stub, capsys, studio_folder):
    status = _status(studio_folder, capsys)
    assert status["state"] == "Studio thread (checkpoints kept by the LangGraph server)"
    with RunStore(studio_folder / "run.sqlite", "thread-a") as store:
        last = store.rounds()[-1]["summary_after"]
    assert status["summary"] == last and status["summary"]
    assert status["prompts"] == 6 and status["rounds_done"] == 2
    assert not (studio_folder / "checkpoints.sqlite").exists()


def test_resume_of_a_studio_thread_is_refused(tmp_path, stub, capsys, studio_folder):
    before = (studio_folder / "run.json").read_text()
    assert main(["resume", str(studio_folder), "--base-url", stub.base_url,
                 "--no-progress"]) == 2
    assert "is a Studio thread's run folder" in _error(capsys)
    assert (studio_folder / "run.json").read_text() == before
    assert not (studio_folder / "checkpoints.sqlite").exists()


@pytest.fixture
def studio_folder(tmp_path: Path, stub: StubServer) -> Path:
    """A Studio thread's run folder, as the Studio graph leaves it (no checkpoint file)."""

    from graph.context import StudioContext

    ctx = StudioContext(base_url=stub.base_url, model="stub", rounds=2, prompts_per_round=3,
                        runs_dir=str(tmp_path / "runs"))
    run_studio(ctx, "thread-a")
    folder = tmp_path / "runs" / "thread-a"
    assert (folder / STUDIO_FILE).is_file()
    return folder
