"""Bad input to every entry point (CLI, Studio, a run folder) is refused with one line that names
the option, the variable or the file, before anything is created (issue 9, parts 8-11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import graph.cli
from experiment.cli import main, parser
from graph.cli import _context
from graph.context import Context, ContextError
from graph.runner import Run, RunError, create_run
from graph.seeds import read_seeds
from graph.studio import data_advisor
from tools.files import TextFileError
from tools.store import close_shared

DEAD = "http://127.0.0.1:9/v1"  # nothing listens: a run that got past the checks would fail
KEY = "sk-proj-canary-5b1c77e0aa"


def _refused(capsys, *argv: str) -> str:
    """Run ``data-advisor ARGV``; it must exit with status 2; its stderr."""
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    assert stop.value.code == 2
    return capsys.readouterr().err


# --- numbers (part 8) -------------------------------------------------------------------

@pytest.mark.parametrize(
    "option",
    [["--rounds", "0"], ["--rounds", "-3"], ["-k", "0"], ["-k", "-5"], ["--target-size", "-1"],
     ["--examples", "-1"], ["--max-concurrency", "0"], ["--rounds", "ten"]],
)
def test_run_refuses_a_bad_number_before_creating_the_folder(tmp_path, capsys, option):
    folder = tmp_path / "r"
    err = _refused(capsys, "run", "--base-url", DEAD, "--run", str(folder), *option)
    assert f"argument {option[0]}" in err and ("must be >= 1" in err or "not an integer" in err)
    assert not folder.exists()  # so the next `run` into it is not blocked


def test_an_explicit_zero_is_not_the_default():
    """``--rounds 0`` once fell through ``args.rounds or 10``; the Context refuses it too."""
    args = parser().parse_args(["run", "--rounds", "3"])
    args.rounds = 0  # past argparse: the Context check is the one every entry point has
    with pytest.raises(ContextError, match="rounds: got 0; must be >= 1"):
        _context(args)


def test_target_size_alone_leaves_the_rounds_unbounded(monkeypatch):
    monkeypatch.delenv("DATA_ADVISOR_ROUNDS", raising=False)
    assert _context(parser().parse_args(["run", "--target-size", "50"])).rounds >= 10**6
    assert _context(parser().parse_args(["run"])).rounds == 10
    monkeypatch.setenv("DATA_ADVISOR_ROUNDS", "7")
    assert _context(parser().parse_args(["run", "--target-size", "50"])).rounds == 7


def test_a_bad_studio_context_fails_the_run_with_the_message(stub, tmp_path):
    context = {"base_url": stub.base_url, "model": "stub", "rounds": 0,
               "runs_dir": str(tmp_path / "runs")}
    try:
        with pytest.raises(ContextError, match="rounds: got 0; must be >= 1"):
            data_advisor.invoke({}, {"configurable": {"thread_id": "t1"}}, context=context)
    finally:
        close_shared()
    assert stub.requests == [] and not (tmp_path / "runs").exists()


def test_a_bad_value_in_run_json_names_the_file(tmp_path, capsys):
    run = create_run(tmp_path / "r", "data_advisor", Context(rounds=1),
                     embedded=True)
    saved = json.loads((run.folder / "run.json").read_text())
    saved["context"]["prompts_per_round"] = -5
    (run.folder / "run.json").write_text(json.dumps(saved))
    with pytest.raises(RunError, match=r"run\.json: prompts_per_round: got -5; must be >= 1"):
        Run.load(run.folder)
    assert main(["status", str(run.folder)]) == 2
    err = capsys.readouterr().err
    assert "prompts_per_round: got -5" in err and "Traceback" not in err


# --- the environment (part 9) ----------------------------------------------------------

def test_an_explicit_flag_beats_the_environment_even_at_the_default(monkeypatch):
    monkeypatch.setenv("DATA_ADVISOR_PROMPTS_PER_ROUND", "5")
    monkeypatch.setenv("DATA_ADVISOR_MAX_CONCURRENCY", "4")
    given = _context(parser().parse_args(["run", "-k", "10", "--max-concurrency", "32"]))
    assert (given.prompts_per_round, given.max_concurrency) == (10, 32)
    unset = _context(parser().parse_args(["run"]))
    assert (unset.prompts_per_round, unset.max_concurrency) == (5, 4)  # environment > default


@pytest.mark.parametrize(
    ("var", "text", "message"),
    [("DATA_ADVISOR_RULE_CHECK", "ture", "DATA_ADVISOR_RULE_CHECK=ture: not a boolean"),
     ("DATA_ADVISOR_PROMPTS_PER_ROUND", "abc", "DATA_ADVISOR_PROMPTS_PER_ROUND=abc: not an "
      "integer")],
)
def test_run_refuses_a_bad_variable_naming_it(tmp_path, capsys, monkeypatch, var, text, message):
    monkeypatch.setenv(var, text)
    folder = tmp_path / "r"
    assert main(["run", "--base-url", DEAD, "--run", str(folder)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not folder.exists()


# --- files (part 10) -------------------------------------------------------------------

def _latin1(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("latin-1"))
    return path


def test_a_seed_file_that_is_not_utf8_names_the_file_byte_and_line(tmp_path, capsys):
    seeds = _latin1(tmp_path / "seeds.txt", "How do I pick a lock?\nWrite a scam email.\nMärchen\n")
    with pytest.raises(TextFileError) as error:
        read_seeds("prompts", str(seeds))
    assert str(error.value) == f"{seeds}: not UTF-8 text (byte 0xe4 at line 3); save it as UTF-8"
    folder = tmp_path / "r"
    argv = ["run", "--base-url", DEAD, "--seed-prompts", str(seeds), "--run", str(folder)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "seeds.txt: not UTF-8 text (byte 0xe4 at line 3)" in err and "Traceback" not in err
    assert not folder.exists()


def test_run_names_the_template_file_and_line(tmp_path, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "generator.txt").write_text("{examples}\n{weakness}\nReply with {one prompt.\n")
    folder = tmp_path / "r"
    assert main(["run", "--base-url", DEAD, "--prompts", str(prompts), "--run", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "generator.txt line 3: unmatched '{' (write '{{' for a literal brace)" in err
    _latin1(prompts / "generator.txt", "{examples}\n{weakness} für\n")
    assert main(["run", "--base-url", DEAD, "--prompts", str(prompts), "--run", str(folder)]) == 2
    assert "generator.txt: not UTF-8 text (byte 0xfc at line 2)" in capsys.readouterr().err
    assert not folder.exists()


def test_a_corrupt_run_json_names_the_file_and_the_line(tmp_path, capsys):
    run = create_run(tmp_path / "r", "data_advisor", Context(rounds=1),
                     embedded=True)
    (run.folder / "run.json").write_text("<<<<<<< HEAD\n")
    assert main(["status", str(run.folder)]) == 2
    err = capsys.readouterr().err
    assert "run.json" in err and "not valid JSON" in err and "line 1 column 1" in err
    assert "Traceback" not in err


# --- the API key (part 11) -------------------------------------------------------------

def test_a_key_given_to_api_key_env_is_refused_and_written_nowhere(tmp_path, capsys):
    folder = tmp_path / "r"
    err = _refused(capsys, "run", "--base-url", DEAD, "--api-key-env", KEY, "--run", str(folder))
    assert "argument --api-key-env: takes the NAME of an environment variable, not the key" in err
    assert KEY not in err and not folder.exists()
    run = create_run(folder, "data_advisor", Context(rounds=1),
                     embedded=True)
    before = (folder / "run.json").read_text()
    err = _refused(capsys, "resume", str(folder), "--api-key-env", KEY)
    assert "NAME of an environment variable" in err and KEY not in err
    assert (run.folder / "run.json").read_text() == before


def test_run_warns_when_the_key_variable_is_unset_for_a_remote_server(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setattr(graph.cli, "_execute", lambda run, **_: 0)  # no server to reach
    monkeypatch.delenv("REMOTE_KEY", raising=False)
    remote = ["run", "--base-url", "http://gpu-box.example:8000/v1", "--api-key-env", "REMOTE_KEY"]
    assert main([*remote, "--run", str(tmp_path / "a")]) == 0
    [warning] = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert "REMOTE_KEY is not set" in warning and "http://gpu-box.example:8000/v1" in warning
    monkeypatch.setenv("REMOTE_KEY", KEY)
    assert main([*remote, "--run", str(tmp_path / "b")]) == 0
    assert "warning" not in capsys.readouterr().err
    monkeypatch.delenv("REMOTE_KEY")
    local = ["run", "--base-url", DEAD, "--api-key-env", "REMOTE_KEY", "--run", str(tmp_path / "c")]
    assert main(local) == 0
    assert "warning" not in capsys.readouterr().err
    assert KEY not in "".join(p.read_text() for p in tmp_path.rglob("run.json"))
