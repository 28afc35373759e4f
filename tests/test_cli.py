"""The command line: resume at moved endpoints, progress in logs, the end of a run, --help."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from experiment.cli import main, parser
from graph.context import Context
from graph.runner import Run, create_run
from testing.stub_server import StubHTTPError, StubServer, data_advisor_handler
from tools.store import RunStore

CANARY = "sk-canary-7e3f09a1d2"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiment.cli", *args]


def _files_hold(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def _dies_after_first_round(body: dict[str, Any]) -> str:
    """Server A: answers round 1, then (a different service on its port) 404 for all."""
    _dies_after_first_round.critic_calls += body["messages"][-1]["content"].rstrip().endswith(
        "Category:"
    )
    if _dies_after_first_round.critic_calls > 1:
        raise StubHTTPError(404, "no such model here")
    return data_advisor_handler(body)


_dies_after_first_round.critic_calls = 0  # type: ignore[attr-defined]


def test_resume_at_a_new_base_url(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    run = tmp_path / "moved"
    _dies_after_first_round.critic_calls = 0  # type: ignore[attr-defined]
    with StubServer(handler=_dies_after_first_round) as a:
        url_a = a.base_url
        args = ["run", "--base-url", url_a, "--model", "stub", "--rounds", "3", "-k", "3"]
        assert main([*args, "--run", str(run), "--no-progress"]) == 1
        hint = capsys.readouterr().err
        assert f"fix the endpoint and run `data-advisor resume {run}`" in hint
        assert f"`data-advisor resume {run} --base-url URL` (or --advisor-url URL)" in hint
    with RunStore(run / "run.sqlite", Run.load(run).run_id) as store:
        assert [r["round"] for r in store.rounds() if r["finished_at"]] == [1]
    with StubServer() as b:  # the server moved: A is gone, B is up
        code = main(["resume", str(run), "--base-url", b.base_url, "--no-progress"])
        err = capsys.readouterr().err
        assert code == 0, err
        assert f"base_url: {url_a} -> {b.base_url}" in err
        assert b.requests and all(h.get("authorization") == f"Bearer {CANARY}" for h in b.headers)
    with RunStore(run / "run.sqlite", Run.load(run).run_id) as store:
        rounds = store.rounds()
        assert [r["round"] for r in rounds if r["finished_at"]] == [1, 2, 3]
        assert len(list(store.samples(with_response=True))) == 9
    saved = json.loads((run / "run.json").read_text())
    assert saved["context"]["base_url"] == b.base_url
    [entry] = saved["history"]
    assert (entry["field"], entry["old"], entry["new"]) == ("base_url", url_a, b.base_url)
    assert entry["time"].endswith("+00:00")
    assert _files_hold(run, CANARY) == []
    assert Run.load(run).history == saved["history"]  # kept by the next save
    assert not list(run.glob(".run.json.*"))  # the atomic write left no temp file


def test_resume_switches_an_embedded_run_to_a_server(tmp_path, capsys):
    """A run started on the embedded vLLM, resumed at a server: the model keeps its served
    name, and the switch is in the history."""
    run = create_run(tmp_path / "emb", "data_advisor", Context(rounds=1, prompts_per_round=2),
                     embedded=True)
    with StubServer() as stub:
        code = main(["resume", str(run.folder), "--base-url", stub.base_url, "--no-progress"])
        assert code == 0, capsys.readouterr().err
        assert {r["model"] for r in stub.requests} == {"SmolLM2-135M-Instruct"}
    saved = json.loads((run.folder / "run.json").read_text())
    assert saved["embedded"] is False
    assert [(h["field"], h["old"], h["new"]) for h in saved["history"]] == [
        ("embedded", True, False), ("base_url", None, stub.base_url),
    ]
    assert not (run.folder / "vllm.log").exists()  # no embedded server was started


def test_resume_changes_a_role_endpoint_and_nothing_else(tmp_path, stub, capsys):
    ctx = Context(base_url=stub.base_url, model="stub", rounds=1, prompts_per_round=2)
    run = create_run(tmp_path / "r", "data_advisor", ctx, embedded=False)
    before = (run.folder / "run.json").read_text()
    refused = [
        (["--rounds", "5"], "not --rounds 5"),
        (["--base-url", "gpu-box:8000"], "is not an http(s) URL"),
        (["--responder-url", "http://me:sk-x@host/v1"], "--responder-url holds a password"),
    ]
    for extra, message in refused:
        assert main(["resume", str(run.folder), *extra, "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    assert (run.folder / "run.json").read_text() == before  # nothing written
    with StubServer() as responder:
        code = main(["resume", str(run.folder), "--responder-url", responder.base_url,
                     "--responder-model", "safe", "--no-progress"])
        assert code == 0, capsys.readouterr().err
        assert {r["model"] for r in responder.requests} == {"safe"}
    saved = json.loads((run.folder / "run.json").read_text())
    assert [(h["field"], h["new"]) for h in saved["history"]] == [
        ("responder_base_url", responder.base_url), ("responder_model", "safe"),
    ]
    assert saved["context"]["base_url"] == stub.base_url


def test_resume_changes_how_long_to_wait(tmp_path, stub, capsys):
    ctx = Context(base_url=stub.base_url, model="stub", rounds=1, prompts_per_round=2)
    run = create_run(tmp_path / "r", "data_advisor", ctx, embedded=False)
    with pytest.raises(SystemExit) as refused:  # argparse: refused before anything is read
        main(["resume", str(run.folder), "--request-timeout", "0", "--no-progress"])
    assert refused.value.code == 2 and "--request-timeout" in capsys.readouterr().err
    code = main(["resume", str(run.folder), "--request-timeout", "42", "--max-retries", "1",
                 "--node-timeout", "90", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((run.folder / "run.json").read_text())
    assert {h["field"]: h["new"] for h in saved["history"]} == {
        "request_timeout": 42.0, "max_retries": 1, "node_timeout": 90.0}
    loaded = Run.load(run.folder)
    assert (loaded.context.request_timeout, loaded.context.max_retries,
            loaded.context.node_timeout) == (42.0, 1, 90.0)


def test_a_variable_left_in_the_shell_does_not_move_a_run(tmp_path, stub, monkeypatch):
    """run.json wins over DATA_ADVISOR_* variables on resume (they fill context defaults)."""
    ctx = Context(base_url=stub.base_url, model="SmolLM2-135M-Instruct", rounds=1,
                  prompts_per_round=2)  # the model's name is the context's default
    run = create_run(tmp_path / "r", "data_advisor", ctx, embedded=False)
    monkeypatch.setenv("DATA_ADVISOR_MODEL", "some-other-model")
    monkeypatch.setenv("DATA_ADVISOR_MAX_CONCURRENCY", "7")
    loaded = Run.load(run.folder)
    assert loaded.context.model == "SmolLM2-135M-Instruct"
    assert loaded.context.max_concurrency == 32
    assert main(["resume", str(run.folder), "--no-progress"]) == 0
    assert {r["model"] for r in stub.requests} == {"SmolLM2-135M-Instruct"}


def test_resume_refuses_a_model_for_the_embedded_server(tmp_path, capsys):
    run = create_run(tmp_path / "emb", "data_advisor", Context(rounds=1), embedded=True)
    assert main(["resume", str(run.folder), "--model", "other/model"]) == 2
    assert "--model on resume names the model served at --base-url" in capsys.readouterr().err
    assert json.loads((run.folder / "run.json").read_text())["history"] == []


def test_run_refuses_a_key_in_the_url(tmp_path, capsys):
    url = f"http://user:{CANARY}@127.0.0.1:9/v1"
    assert main(["run", "--base-url", url, "--run", str(tmp_path / "r")]) == 2
    assert "--base-url holds a password" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_progress_in_a_log_is_one_line_per_round_and_the_end_shows_rows(tmp_path):
    """Output to a file or pipe (not a terminal): one plain line per round instead of the
    bar, then a few kept rows and the next commands."""
    run = tmp_path / "logged"
    with StubServer() as stub:
        done = subprocess.run(
            _cli("run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "3",
                 "-k", "2", "--run", str(run)),
            capture_output=True, text=True, timeout=300,
        )
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if " round " in ln]
    assert [ln.split(" round ")[1].split(" ")[0] for ln in lines] == ["1/3", "2/3", "3/3"], lines
    with RunStore(run / "run.sqlite", Run.load(run).run_id) as store:
        weaknesses = [r["weaknesses"][0] for r in store.rounds()]
        first = next(store.samples(with_response=True))
    for line, weakness in zip(lines, weaknesses, strict=True):
        assert f"weakness {weakness} |" in line and "kept 2 " in line and "rejected " in line
        assert line.rstrip().endswith(" s")
    assert "━" not in done.stderr  # no rich bar
    assert "a few kept rows" in done.stdout
    assert first["prompt"][:30] in done.stdout
    assert f"next: data-advisor history {run}" in done.stdout
    assert f"data-advisor export {run}" in done.stdout
    assert f"data-advisor eval diversity {run}" in done.stdout


def test_resume_in_a_log_reports_only_the_rounds_it_ran(tmp_path):
    with StubServer() as stub:
        ctx = Context(base_url=stub.base_url, model="stub", rounds=1, prompts_per_round=2)
        run = create_run(tmp_path / "r", "data_advisor", ctx, embedded=False)
        assert main(["resume", str(run.folder), "--no-progress"]) == 0
        saved = json.loads((run.folder / "run.json").read_text())
        saved["context"]["rounds"] = 3  # a longer run that stopped after round 1
        (run.folder / "run.json").write_text(json.dumps(saved))
        done = subprocess.run(_cli("resume", str(run.folder)), capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 0, done.stderr
    rounds = [ln.split(" round ")[1].split(" ")[0] for ln in done.stderr.splitlines()
              if " round " in ln]
    assert rounds == ["2/3", "3/3"], done.stderr


# --- --help -------------------------------------------------------------------------------

COMMANDS = ["run", "resume", "status", "history", "export", "serve", "train", "experiment"]
# training/launch.py's --val-fraction and --seed have no help text yet (not this file's).
OPTIONS_CHECKED = COMMANDS


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_a_description_and_an_example(name):
    text = _commands()[name].format_help()
    assert "example" in text and f"data-advisor {name} " in text.split("example", 1)[1]


@pytest.mark.parametrize("name", OPTIONS_CHECKED)
def test_help_explains_every_option_with_its_default(name):
    command = _commands()[name]
    formatter = command._get_formatter()
    for action in command._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name} {action.option_strings or action.dest}: no help"
        shown = formatter._get_help_string(action) % vars(action)
        if action.option_strings and action.default not in (None, False):
            assert "default" in shown, f"{name} {action.option_strings}: {shown}"


def test_top_level_help_is_current():
    text = parser().format_help()
    for word in ("generates", "trains", "evaluates", "reports", "experiment"):
        assert word in text
