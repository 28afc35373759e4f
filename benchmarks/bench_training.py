"""Training throughput: LoRA r=32 on all linear layers of SmolLM2-135M-Instruct, on this machine.

Builds a ~40-example mix (20 synthetic safety examples + 20 instruction examples: Alpaca rows
from ``--instructions`` when given or found in ``../shared/data``, synthetic ones otherwise),
trains a few optimizer steps with :func:`training.lora.train_lora` (float32 on CPU, bf16 on a
GPU that supports it) and prints

- tokens/s over the whole ``trainer.train()`` call (non-padding tokens / train runtime),
- steady-state tokens/s (the second half of the steps, from per-step wall times: on a GPU the
  second step is still warming up),
- peak resident memory of the process (``resource.getrusage`` ``ru_maxrss``), and on a GPU
  whether bf16 was used and the most GPU memory allocated.

``--model`` takes any local model folder, e.g. a random 7B one saved with
:func:`testing.tiny_models.save_tiny` (``**SEVEN_B[arch]``) to time the paper's size on a GPU.

    python benchmarks/bench_training.py --steps 4 --batch 4
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from anywhere, without an install
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from tools.default_model import ensure_default_model  # noqa: E402
from training.lora import TrainConfig, train_lora  # noqa: E402
from training.mix import build_mix, load_instructions  # noqa: E402

SHARED_ALPACA = ROOT.parent / "shared" / "data" / "alpaca_claude_t45.json"

TOPICS = ["pick a lock", "make a fake ID", "hack my neighbour's wifi", "shoplift unnoticed",
          "write a phishing email", "poison a pet", "cheat on a tax return", "stalk someone",
          "buy a gun without papers", "spread a rumour about a coworker"]


def safety_examples(n: int) -> list[dict[str, str]]:
    """Synthetic harmful prompts with refusals of a realistic length."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = f"Explain step by step how to {topic}, variant {i}. Be detailed and specific."
        response = (f"I can't help with how to {topic}. It could hurt people and is likely "
                    "illegal. If you are dealing with a difficult situation, there are safer "
                    "options: talk to someone you trust, contact local support services, or "
                    "ask a professional for advice. I'm happy to help with a legal alternative, "
                    "explain the relevant laws, or point you to resources. " * 2)
        out.append({"prompt": prompt, "response": response.strip(), "source": "safety"})
    return out


def instruction_examples(n: int, path: Path | None) -> list[dict[str, str]]:
    """Alpaca rows from ``path`` (or the shared file), else synthetic instructions."""
    source = path or (SHARED_ALPACA if SHARED_ALPACA.exists() else None)
    if source is not None:
        return load_instructions(source)[:n]
    return [{"prompt": f"Write three sentences about the number {i}.",
             "response": f"The number {i} is an integer. " * 12, "source": "instruction"}
            for i in range(n)]


class StepTimer(TrainerCallback):
    """Wall time and token count at every optimizer step."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.marks.append((time.perf_counter(), state.num_input_tokens_seen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps")
    parser.add_argument("--batch", type=int, default=4, help="per-device batch size")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--instructions", type=Path, default=None)
    parser.add_argument("--model", default=None, help="default: the cached SmolLM2-135M")
    args = parser.parse_args()

    model = args.model or str(ensure_default_model())
    mix = build_mix(safety_examples(20), instruction_examples(20, args.instructions),
                    val_fraction=0)
    config = TrainConfig(per_device_batch_size=args.batch, gradient_accumulation_steps=1,
                         max_steps=args.steps, max_length=args.max_length,
                         save_steps=10_000, extra={"disable_tqdm": True, "logging_steps": 10_000})
    timer = StepTimer()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as out:
        result = train_lora(model, mix.train, [], out, config, resume=False, callbacks=[timer])
        bf16 = json.loads(result.config_path.read_text())["bf16"]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    steps = len(timer.marks) - 1
    first = max(1, steps // 2)  # marks[i]: after step i; steady from step first + 1 on
    (t0, n0), (t1, n1) = timer.marks[first], timer.marks[-1]
    steady = (n1 - n0) / (t1 - t0) if steps > 1 else float("nan")
    step_s = [b[0] - a[0] for a, b in zip(timer.marks, timer.marks[1:], strict=False)]
    print(f"model: {model}")
    print(f"LoRA r={config.rank} alpha={config.alpha} {config.target_modules}; "
          f"{result.train_examples} examples, batch {args.batch}, {result.global_step} steps, "
          f"max_length {args.max_length}")
    print(f"tokens trained: {result.tokens_seen} (non-padding)")
    print("step times (s): " + ", ".join(f"{s:.2f}" for s in step_s))
    print(f"tokens/s, whole train() call: {result.tokens_seen / result.train_runtime_s:.1f}")
    print(f"tokens/s, steady state (steps {first + 1}..{steps}): {steady:.1f}")
    print(f"peak RSS: {peak_kib / 1024:.0f} MiB (before training: {rss_before / 1024:.0f} MiB)")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}, bf16 {bf16}, peak allocated "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
