"""``benchmarks/bench_vllm.py``'s shapes and report, without a server (the runs are benchmarks)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_vllm  # noqa: E402


def test_shapes_parse_and_label() -> None:
    shapes = bench_vllm.parse_shapes("1x10, 3x10od,6x10d")
    assert shapes == [bench_vllm.Shape(1, 10), bench_vllm.Shape(3, 10, True, True),
                      bench_vllm.Shape(6, 10, False, True)]
    assert [s.label for s in shapes] == ["1x10", "3x10od", "6x10d"]
    for bad in ("3x", "x10", "3x10oo", "0x10", "3x10q"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_vllm.parse_shapes(bad)


def test_report_rows_per_shape() -> None:
    """Each run is reported under its shape, with its tokens/s over the raw mean."""
    runs = [bench_vllm.RunResult(shape=shape, rounds=2, wall_s=60.0, tokens=tokens, kept=30,
                                 running=[0.0, 1.0, 5.0, 6.0], node_seconds={"generator": 30.0},
                                 node_tokens={"generator": 900})
            for shape, tokens in zip(bench_vllm.parse_shapes("1x10,3x10o"), (3000, 6000),
                                     strict=True)]
    result = bench_vllm.VllmResult(model="m", startup_s=1.0, single_tps=10.0,
                                   raw_tps=[90.0, 110.0], runs=runs, responder_tps=80.0)
    assert [result.ratio(run) for run in runs] == [0.5, 1.0]
    assert runs[0].kept_per_minute == 30.0 and runs[0].share_running(1) == 0.5
    text = bench_vllm.report(result)
    assert "per node at 1x10 " in text and "per node at 3x10o " in text
    row = next(line.split() for line in text.splitlines() if line.strip().startswith("3x10o"))
    assert row[:2] == ["3x10o", "30"] and row[6] == "1.000"  # W x K a round, the ratio
