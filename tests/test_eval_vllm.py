"""Evaluation on the real embedded vLLM with SmolLM2: CatQA and MMLU slices, then the report.

No quality is assumed from SmolLM2-135M: the test checks that the numbers are computed,
stored and rendered.
"""

from __future__ import annotations

import json

import pytest
from conftest import SHARED

from experiment.cli import main
from tools.server import EmbeddedServer

pytestmark = pytest.mark.vllm


def test_safety_utility_and_report_on_embedded_vllm(tmp_path, capsys):
    if not (SHARED / "catqa_english.json").exists():
        pytest.skip("shared data not available")
    out = tmp_path / "results"
    with EmbeddedServer(log_path=tmp_path / "vllm.log") as server:
        common = ["--base-url", server.base_url, "--model", server.model_name, "--limit", "20",
                  "--out", str(out), "--label", "smollm2"]
        assert main(["eval", "safety", "--catqa", str(SHARED / "catqa_english.json"),
                     "--judge", "refusal", *common]) == 0
        assert main(["eval", "utility", "--mmlu", str(SHARED / "mmlu_validation.jsonl"),
                     *common]) == 0
    safety = json.loads((out / "safety-catqa-smollm2.json").read_text())
    utility = json.loads((out / "utility-mmlu-smollm2.json").read_text())
    assert safety["n"] == 20 and 0.0 <= safety["safety_score"] <= 1.0
    assert len(safety["per_category"]) >= 2
    assert utility["n"] == 20 and 0.0 <= utility["accuracy"] <= 1.0
    assert len((out / safety["responses_file"]).read_text().splitlines()) == 20
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "smollm2" in report
    assert (tmp_path / "report" / "safety_utility.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "safety score" in printed and "accuracy" in printed
