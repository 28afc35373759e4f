"""Studio's graphs in process: a run folder per thread, and the round's prompts in the state.

`tests/test_studio.py` checks the same through `langgraph dev`'s HTTP API (slow); these run the
graphs of ``graph/studio.py`` directly, with an in-memory checkpointer standing in for the
server's persistence.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_studio

from experiment.cli import main
from graph.context import STUDIO_FILE, StudioContext
from graph.runner import DB_FILE, Run
from graph.state import RESPONSE_PREVIEW
from nodes.responder import preview
from tools.store import RunStore


def shown_prompts(values: dict) -> list[str]:
    """The round's prompts as the state shows them: its batches' prompts, batch by batch."""
    return [p for batch in values.get("batches", []) for p in batch.get("prompts", [])]


def _context(stub, runs: Path, **overrides) -> StudioContext:
    values = {"base_url": stub.base_url, "model": "stub", "rounds": 2, "prompts_per_round": 3,
              "runs_dir": str(runs), "request_timeout": 10.0, **overrides}
    return StudioContext(**values)


def test_each_thread_is_a_run_folder_the_commands_accept(stub, tmp_path, capsys):
    runs = tmp_path / "runs"
    run_studio(_context(stub, runs), "thread-a")
    run_studio(_context(stub, runs, rounds=1), "thread-b", "self_instruct")
    folder = runs / "thread-a"
    assert {p.name for p in folder.iterdir()} >= {"run.json", DB_FILE, STUDIO_FILE}
    assert StudioContext(runs_dir=str(runs)).store_path("thread-a") == str(folder / DB_FILE)
    run = Run.load(folder)
    assert run.method == "data_advisor" and run.name == "thread-a"
    assert run.context.rounds == 2 and run.context.prompts_per_round == 3
    assert json.loads((folder / STUDIO_FILE).read_text())["thread_id"] == "thread-a"
    with RunStore(folder / DB_FILE, "thread-a") as store:
        assert store.counts()["responses"] == 6
    assert Run.load(runs / "thread-b").method == "self_instruct"

    capsys.readouterr()
    assert main(["status", str(folder), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["prompts"] == 6 and status["responses"] == 6 and status["rounds_done"] == 2
    assert main(["history", str(folder), "--json"]) == 0
    assert [r["round"] for r in json.loads(capsys.readouterr().out)] == [1, 2]
    assert main(["export", str(folder)]) == 0
    rows = (folder / "export" / "messages.jsonl").read_text().splitlines()
    assert len(rows) == 6


def test_the_state_holds_each_rounds_prompts_and_responses(stub, tmp_path):
    graph, config = run_studio(_context(stub, tmp_path / "runs"), "t1")
    with RunStore(tmp_path / "runs" / "t1" / DB_FILE, "t1") as store:
        by_round = {r: [s for s in store.samples() if s["round"] == r] for r in (1, 2)}
    final = graph.get_state(config).values
    assert shown_prompts(final) == [s["prompt"] for s in by_round[2]]  # replaced, not added
    assert final["round_responses"] == [preview(s["response"]) for s in by_round[2]]
    # every step shows the prompts of its own round (none before its generator ran)
    seen = set()
    for snapshot in graph.get_state_history(config):
        values = snapshot.values
        if shown_prompts(values):
            assert shown_prompts(values) == [s["prompt"] for s in by_round[values["round"]]]
            seen.add(values["round"])
        if values.get("round_responses"):
            assert len(values["round_responses"]) == len(shown_prompts(values))
    assert seen == {1, 2}


def test_response_previews_are_cut_and_marked():
    assert preview("short") == "short"
    long = "x" * (RESPONSE_PREVIEW + 50)
    assert len(preview(long)) == RESPONSE_PREVIEW and preview(long).endswith("…")


def test_a_thread_id_that_is_not_a_folder_name_is_refused(stub, tmp_path):
    ctx = _context(stub, tmp_path / "runs")
    with pytest.raises(ValueError, match="cannot name a run folder"):
        ctx.run_folder("../elsewhere")
    assert not (tmp_path / "elsewhere").exists()


def test_an_empty_runs_dir_keeps_all_threads_in_data_path(stub, tmp_path):
    ctx = _context(stub, tmp_path / "runs", runs_dir="", data_path=str(tmp_path / "all.sqlite"),
                   rounds=1)
    run_studio(ctx, "t1")
    assert not (tmp_path / "runs").exists()
    with RunStore(tmp_path / "all.sqlite", "t1") as store:
        assert store.counts()["prompts"] == 3
