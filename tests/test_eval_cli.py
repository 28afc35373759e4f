"""The evaluation commands of the CLI, on shared data and on a run made against the stub."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED

from graph.cli import main


def test_eval_diversity_on_files_and_runs(tmp_path, stub, capsys):
    catqa = SHARED / "catqa_english.json"
    if not catqa.exists():
        pytest.skip("shared data not available")
    run = tmp_path / "run"
    assert main(["run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "3", "-k", "5",
                 "--run", str(run), "--no-progress"]) == 0
    out = tmp_path / "results"
    assert main(["eval", "diversity", str(catqa), str(run), "--size", "10",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "catqa_english" in printed and "d-8" in printed
    catqa_result = json.loads((out / "diversity-catqa_english.json").read_text())
    run_result = json.loads((out / "diversity-run.json").read_text())
    assert catqa_result["n_prompts"] == 550 and catqa_result["categories"] == 11
    assert run_result["n_prompts"] == 15 and run_result["categories"] == 3
    assert run_result["distinct_at_size"]["size"] == 10
