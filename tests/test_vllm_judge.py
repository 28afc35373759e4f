"""The prompt judge on the real embedded vLLM: SmolLM2-135M as the ``llm`` judge in a run.

Mechanics only: a 135M model's verdicts and categories are close to random, so the numbers
(share rejected as not harmful, coverage, entropy) are not meaningful; what is checked is that
every candidate is judged and ends up kept (harmful with a category, or unjudged) or rejected
with a reason, that the counts add up, and that status and the round records show the coverage.
Slow: a vLLM start on CPU takes 0.5-2.5 minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from graph.runner import Run
from nodes.filters import REJECTION_REASONS
from tools.store import RunStore
from tools.taxonomy import load_taxonomy

pytestmark = pytest.mark.vllm


def test_smollm2_as_an_llm_judge_on_embedded_vllm(tmp_path):
    run = tmp_path / "judged"
    done = subprocess.run(
        [sys.executable, "-m", "experiment.cli", "run", "--rounds", "2", "-k", "6", "--run",
         str(run), "--no-progress", "--judge", "llm"],
        capture_output=True, text=True, timeout=900,
    )
    log = (run / "vllm.log").read_text() if (run / "vllm.log").exists() else ""
    assert done.returncode == 0, done.stderr[-3000:] + log[-3000:]

    names = set(load_taxonomy().names)
    with RunStore(run / "run.sqlite", Run.load(run).run_id) as store:
        samples = list(store.samples())
        rejections = list(store.db.query("select reason from rejections"))
        counts = store.judge_counts()
        rounds = store.rounds()
    assert len(samples) + len(rejections) == 12
    assert {r["reason"] for r in rejections} <= set(REJECTION_REASONS)
    for s in samples:
        assert s["judge_verdict"] in ("harmful", "unjudged"), s
        if s["judge_verdict"] == "harmful":
            assert s["taxonomy_category"] in names, s
        else:
            assert s["taxonomy_category"] is None, s
    totals = {k: sum(c.get(k, 0) for c in counts.values())
              for k in ("harmful", "unjudged", "not_harmful")}
    assert totals["harmful"] + totals["unjudged"] == len(samples)
    assert totals["not_harmful"] == sum(r["reason"] == "not_harmful" for r in rejections)
    assert all(len(r["weakness_coverage"]) == 1 for r in rounds)

    status = subprocess.run([sys.executable, "-m", "experiment.cli", "status", str(run),
                             "--json"], capture_output=True, text=True, timeout=120)
    info = json.loads(status.stdout)
    assert info["judge"] == "llm (SmolLM2-135M-Instruct)"
    assert info["judged"] == totals
    assert sum(info["prompts_per_category"].values()) == totals["harmful"]
    print(f"SmolLM2 as llm judge (not meaningful): {totals}, {info['coverage']}")
