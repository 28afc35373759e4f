"""Multi-process LoRA training on CPU: ``accelerate launch`` with two processes (DDP over gloo).

Runs ``accelerate launch --config_file training/accelerate/cpu-2proc.yaml -m training.launch``
on a tiny random Llama (hidden size 16, two layers, the SmolLM2 tokenizer) for two steps and
checks that both processes took part (world size 2, MULTI_CPU, gloo), that the run exited 0
and that the adapter was saved. The GPU configs in ``training/accelerate/`` are only loaded
(accelerate's config loader rejects unknown keys); they are not run on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from training.launch import build_parser, train_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "accelerate"


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def test_configs_load_as_accelerate_configs() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        assert yaml.safe_load(path.read_text("utf-8"))["compute_environment"] == "LOCAL_MACHINE"
        config = load_config_from_file(str(path))  # unknown keys are an error here
        kinds[path.stem] = str(config.distributed_type.value)
        assert config.use_cpu == path.stem.startswith("cpu-"), path
    assert kinds == {
        "cpu-2proc": "MULTI_GPU",  # + use_cpu: torchrun, MULTI_CPU/gloo inside (see the file)
        "cpu-mpi": "MULTI_CPU",
        "single-gpu": "NO",
        "multi-gpu": "MULTI_GPU",
        "fsdp": "FSDP",
        "deepspeed-zero2": "DEEPSPEED",
    }


def test_launch_options_make_a_train_config() -> None:
    args = build_parser().parse_args([
        "--safety", "s.jsonl", "--instructions", "i.jsonl", "--out", "o", "--rank", "8",
        "--batch-size", "2", "--grad-accum", "1", "--max-steps", "3", "--lr", "1e-4",
        "--target-modules", "q_proj,v_proj", "--no-bf16",
    ])
    config = train_config(args)
    assert (config.rank, config.per_device_batch_size, config.gradient_accumulation_steps,
            config.max_steps, config.learning_rate) == (8, 2, 1, 3, 1e-4)
    assert config.target_modules == ["q_proj", "v_proj"] and config.bf16 is False
    assert config.alpha == 16 and config.dropout == 0.1  # the paper's defaults stay


def test_accelerate_launch_two_cpu_processes(tiny_model: Path, tmp_path: Path) -> None:
    safety = _write_jsonl(tmp_path / "safety.jsonl", [
        {"prompt": f"Harmful request number {i}?", "response": f"I can't help with that ({i})."}
        for i in range(8)
    ])
    instructions = _write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": f"Count to {i}.", "input": "", "output": " ".join(map(str, range(i)))}
        for i in range(2, 10)
    ])
    out = tmp_path / "lora"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(CONFIGS / "cpu-2proc.yaml"), "--main_process_port", "0",
        "-m", "training.launch",
        "--safety", str(safety), "--instructions", str(instructions), "--model", str(tiny_model),
        "--out", str(out), "--rank", "4", "--alpha", "8", "--batch-size", "2",
        "--grad-accum", "1", "--max-steps", "2", "--max-length", "64", "--lr", "1e-3",
        "--val-fraction", "0.1", "--no-resume",
    ]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"accelerate launch did not finish in 300 s:\n{exc.stdout}\n{exc.stderr}")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "training.launch: 2 process(es), MULTI_CPU, backend gloo" in log, log[-6000:]
    assert "training.launch: done, 2 steps of 4 examples (2 process(es))" in log, log[-6000:]
    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    state = json.loads((out / "train_config.json").read_text())
    assert state["global_step"] == 2 and state["train_examples"] == 14
    assert json.loads((out / "mix.json").read_text())["processes"] == 2
