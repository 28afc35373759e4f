"""The real thing: the CLI starts the embedded vLLM server with SmolLM2 and runs Data Advisor.

Slow (a vLLM start on CPU takes 0.5-2.5 minutes). Asserts stored rows, a summary that grew,
and a clean server shutdown. No quality is assumed from SmolLM2-135M.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import psutil
import pytest

from graph.runner import Run
from graph.seeds import read_seeds
from nodes.filters import overlaps
from nodes.rule_check import summary_names, summary_size
from tools.store import RunStore

pytestmark = pytest.mark.vllm


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_data_advisor_on_embedded_vllm(tmp_path):
    run = tmp_path / "da"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiment.cli",
            "run",
            "--rounds",
            "2",
            "-k",
            "6",
            "--run",
            str(run),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = (run / "vllm.log").read_text() if (run / "vllm.log").exists() else ""
    assert done.returncode == 0, done.stderr[-3000:] + log[-3000:]

    with RunStore(run / "run.sqlite", Run.load(run).run_id) as store:
        rounds = store.rounds()
        samples = list(store.samples())
        rejected = store.counts()["rejected"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["finished_at"] and r["weaknesses"][0] for r in rounds)
    # every generator output is either kept or rejected with a reason
    assert len(samples) + rejected == 12
    assert all(s["response"] is not None for s in samples)
    assert all(s["generator_model"] == "SmolLM2-135M-Instruct" for s in samples)
    # the rule check keeps every category and adds each novel weakness (whatever SmolLM2
    # names: a repeated weakness adds nothing, and lines may become groups)
    seeds = read_seeds("categories")
    final = rounds[-1]["summary_after"]
    assert all(overlaps(seed, summary_names(final)) for seed in seeds), final
    for r in rounds:
        grew = summary_size(r["summary_after"]) - summary_size(r["summary_before"])
        assert grew >= (1 if r["weaknesses_novel"][0] else 0), r
    assert all(r["rule_check"] in {"accepted", "corrected"} for r in rounds)

    # clean shutdown: no vLLM process left, port free
    port = int(re.search(r"--port[ =](\d+)", log).group(1))
    assert _port_free(port)
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"]
        and str(port) in " ".join(p.info["cmdline"])
        and "vllm" in " ".join(p.info["cmdline"])
    ]
    assert leftovers == []

    status = subprocess.run(
        [sys.executable, "-m", "experiment.cli", "status", str(run), "--json"],
        capture_output=True,
        text=True,
    )
    assert json.loads(status.stdout)["state"] == "finished"
