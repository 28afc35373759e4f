"""One LoRA adapter from safety + instruction data: :func:`train_adapter` and its launcher.

:func:`train_adapter` mixes safety and instruction data (:mod:`training.mix`) and trains a LoRA
adapter (:func:`training.lora.train_lora`); ``data-advisor train`` (:mod:`training.cli`, with
the options :func:`add_train_arguments` declares) and the experiment's training stage call it in
one process. ``python -m training.launch`` is the same job as an entry point for
``accelerate launch`` or ``torchrun``: started once it trains on one device; started by a
launcher, every process runs this same module and the transformers ``Trainer`` does
data-parallel training (DDP, FSDP or DeepSpeed, as the accelerate config says)::

    python -m training.launch --safety runs/da1 --instructions alpaca.json --out out/da1
    accelerate launch --config_file training/accelerate/cpu-2proc.yaml -m training.launch \\
        --safety runs/da1 --instructions alpaca.json --out out/da1 --max-steps 10
    accelerate launch --config_file training/accelerate/multi-gpu.yaml -m training.launch ...
    torchrun --standalone --nproc_per_node 2 -m training.launch ...

What :func:`train_adapter` adds for several processes (given the launch's
:class:`accelerate.PartialState`; see ``docs/scaling.md``):

- the process group is set up first (:func:`main`; gloo on CPU, NCCL on GPUs), so each GPU
  process uses its own ``cuda:<local rank>`` (QLoRA loads the 4-bit model with ``device_map`` on
  the current device);
- the default model is converted by the main process only, the others wait for it;
- ``--no-resume`` removes old checkpoints once, on the main process, before any process starts;
- only the main process prints and writes ``mix.json``;
- DDP's search for unused parameters is switched off (every LoRA parameter gets a gradient).

Every process builds the same mix (same data, same seed); the Trainer gives each its own shard
of every batch, so one optimizer step sees ``batch size x grad accum x processes`` examples.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.decontam import file_digests
from tools.files import read_json, write_json

if TYPE_CHECKING:
    from training.lora import TrainConfig, TrainResult
    from training.mix import MixSplits

# TrainConfig field <- command-line option (as in ``data-advisor train``)
TRAIN_OPTIONS = {
    "rank": "rank",
    "alpha": "alpha",
    "dropout": "dropout",
    "learning_rate": "lr",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "per_device_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "max_length": "max_length",
    "save_steps": "save_steps",
    "eval_steps": "eval_steps",
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (TrainConfig defaults, the paper's, where an option is unset)."""
    p = argparse.ArgumentParser(
        prog="python -m training.launch",
        description="Train a LoRA adapter on safety + instruction data; run it under "
        "`accelerate launch` or `torchrun` for several processes.",
    )
    add_train_arguments(p)
    return p


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Options of a training run, shared by ``data-advisor train`` and this launcher."""
    p.add_argument("--safety", required=True,
                   help="generated safety data: run folder, export folder, data file, hf:<id>")
    p.add_argument("--instructions", required=True,
                   help="instruction data: Alpaca JSON/JSONL, {prompt, response} rows, hf:<id>")
    p.add_argument("--model", help="target model, HF id or path (default: the embedded "
                   "SmolLM2-135M-Instruct)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (checkpoints, adapter/, loss.png)")
    p.add_argument("--ratio", type=float, help="safety share of the mix, 0..1 (default: all "
                   "safety data and as many instructions)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of the mix held out for validation")
    p.add_argument("--seed", type=int, default=0, help="seed of the mix shuffle and of training")
    p.add_argument("--rank", type=int, help="LoRA rank (default 32)")
    p.add_argument("--alpha", type=int, help="LoRA alpha (default 16)")
    p.add_argument("--dropout", type=float, help="LoRA dropout (default 0.1)")
    p.add_argument("--target-modules", help="comma-separated module names, or all-linear "
                   "(default)")
    p.add_argument("--lr", type=float, help="learning rate (default 2e-5)")
    p.add_argument("--epochs", type=float, help="epochs (default 1)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, help="per-device batch size (default 4)")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps (default 8)")
    p.add_argument("--max-length", type=int, help="tokens per example (default 512)")
    p.add_argument("--save-steps", type=int, help="checkpoint every N steps (default 50)")
    p.add_argument("--eval-steps", type=int, help="evaluate every N steps (default: save steps)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass (less memory)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 (default: where the GPU supports it)")
    p.add_argument("--4bit", dest="load_in_4bit", action="store_true",
                   help="QLoRA: 4-bit base model (CUDA GPU and bitsandbytes only)")
    p.add_argument("--no-resume", action="store_true",
                   help="start from scratch (removes the checkpoints in --out)")
    p.add_argument("--instructions-limit", type=int,
                   help="draw at most this many instruction examples first (default: all)")
    p.add_argument("--decontaminate", nargs="+", default=[], metavar="FILE",
                   help="evaluation set files (CatQA .json, BeaverTails .csv, MMLU .jsonl, ...): "
                   "safety and instruction examples whose prompt equals one of their prompts "
                   "or shares a word 8-gram with them are dropped and counted (default: none)")


def train_config(args: argparse.Namespace) -> Any:
    """The :class:`training.lora.TrainConfig` the options ask for."""
    from training.lora import TrainConfig

    values: dict[str, Any] = {"seed": args.seed, "load_in_4bit": args.load_in_4bit,
                              "gradient_checkpointing": args.gradient_checkpointing,
                              "bf16": args.bf16}
    for name, option in TRAIN_OPTIONS.items():
        if getattr(args, option) is not None:
            values[name] = getattr(args, option)
    if args.target_modules:
        modules = [m.strip() for m in args.target_modules.split(",") if m.strip()]
        values["target_modules"] = modules[0] if modules == ["all-linear"] else modules
    return TrainConfig(**values)


def train_adapter(
    safety: str | Path | Sequence[Mapping[str, str]],
    instructions: str | Path | Sequence[Mapping[str, str]],
    out_dir: str | Path,
    *,
    model: str | Path | None = None,
    config: TrainConfig | None = None,
    ratio: float | None = None,
    seed: int = 0,
    val_fraction: float = 0.05,
    instructions_limit: int | None = None,
    decontaminate: Sequence[str] = (),
    resume: bool = True,
    state: Any = None,
) -> tuple[TrainResult, MixSplits]:
    """Mix safety and instruction data and train a LoRA adapter into ``out_dir``.

    ``safety`` / ``instructions`` are sources :func:`training.mix.load_safety` /
    :func:`training.mix.load_instructions` read, or lists of examples. ``model`` is the target
    (HF id or path; None: the embedded SmolLM2-135M-Instruct). ``instructions_limit`` draws at
    most that many instruction examples (seeded) before mixing. ``decontaminate`` names
    evaluation files whose prompts no training example may contain (:mod:`tools.decontam`);
    their content hashes are recorded in ``mix.json``, and checkpoints made against other
    contents are not resumed (an error says to use ``--no-resume``). ``resume=False`` removes
    the checkpoints in ``out_dir`` first. ``state`` is the :class:`accelerate.PartialState` of a
    multi-process launch (None: one process; see the module docstring). Returns the
    :class:`training.lora.TrainResult` and the :class:`training.mix.MixSplits`; the mix counts
    are also written to ``out_dir/mix.json``.
    """
    from tools.default_model import resolve_model
    from training.lora import TrainConfig, checkpoints, train_lora

    main_process = state is None or state.is_main_process
    out = Path(out_dir)
    with state.main_process_first() if state is not None else nullcontext():
        model_path = resolve_model(None if model is None else str(model))  # converts it once
    digests = file_digests(decontaminate)
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            for old in checkpoints(out):
                shutil.rmtree(old)
        elif checkpoints(out):
            _check_same_decontamination(out, digests)
    processes = 1 if state is None else state.num_processes
    if state is not None:
        state.wait_for_everyone()
    config = config or TrainConfig(seed=seed)
    if processes > 1:  # every LoRA parameter gets a gradient: skip DDP's search
        config = replace(config, extra={"ddp_find_unused_parameters": False, **config.extra})
    splits = _mix(safety, instructions, ratio=ratio, seed=seed, val_fraction=val_fraction,
                  instructions_limit=instructions_limit, decontaminate=decontaminate)
    if main_process:
        if state is not None:
            print(f"training.launch: {processes} process(es), {state.distributed_type.value}, "
                  f"backend {state.backend}, device {state.device}; "
                  f"mix {json.dumps(splits.counts())}", flush=True)
        write_json(out / "mix.json", {
            "counts": splits.counts(), "ratio": ratio, "seed": seed,
            "val_fraction": val_fraction, "instructions_limit": instructions_limit,
            "decontaminate": digests,
            "safety": _described(safety), "instructions": _described(instructions),
            "processes": processes,
        })
    # old checkpoints are gone already (removed once, by the main process)
    result = train_lora(model_path, splits.train, splits.validation, out, config, resume=True)
    return result, splits


def _mix(
    safety: str | Path | Sequence[Mapping[str, str]],
    instructions: str | Path | Sequence[Mapping[str, str]],
    *,
    ratio: float | None,
    seed: int,
    val_fraction: float,
    instructions_limit: int | None,
    decontaminate: Sequence[str],
) -> MixSplits:
    """The training mix of :func:`train_adapter` (the same on every process: same seed)."""
    from tools.decontam import index_of_files
    from training.mix import build_mix, load_instructions, load_safety

    safety_rows = (load_safety(safety) if isinstance(safety, str | Path)
                   else [dict(e, source="safety") for e in safety])
    instr_rows = (load_instructions(instructions) if isinstance(instructions, str | Path)
                  else [dict(e, source="instruction") for e in instructions])
    if instructions_limit is not None and len(instr_rows) > instructions_limit:
        instr_rows = random.Random(seed).sample(instr_rows, instructions_limit)
    return build_mix(safety_rows, instr_rows, ratio=ratio, seed=seed, val_fraction=val_fraction,
                     contamination=index_of_files(decontaminate))


def _check_same_decontamination(out: Path, digests: Mapping[str, str]) -> None:
    """Refuse to resume checkpoints trained on a mix checked against other evaluation files
    (the ``decontaminate`` content hashes in ``mix.json``; a mix.json without them: none)."""
    path = out / "mix.json"
    if not path.is_file():
        return
    recorded = read_json(path, hint="remove it, or train again with --no-resume")
    if (recorded.get("decontaminate") or {}) != dict(digests):
        raise ValueError(
            f"the checkpoints in {out} were trained on a mix checked against other evaluation "
            f"files ({path}: {sorted(recorded.get('decontaminate') or {}) or 'none'}); train "
            "again with --no-resume, or use another --out"
        )


def _described(source: str | Path | Sequence[Mapping[str, str]]) -> str:
    """A data source as ``mix.json`` records it."""
    return str(source) if isinstance(source, str | Path) else "<list>"


def main(argv: Sequence[str] | None = None) -> int:
    """Mix the data and train; every process of a distributed launch runs this."""
    import torch
    from accelerate import PartialState

    args = build_parser().parse_args(argv)
    config = train_config(args)
    # The process group first (a no-op for one process); the Trainer reuses it.
    state = PartialState(cpu=not torch.cuda.is_available())
    result, _ = train_adapter(
        args.safety, args.instructions, args.out, model=args.model, config=config,
        ratio=args.ratio, seed=args.seed, val_fraction=args.val_fraction,
        instructions_limit=args.instructions_limit, decontaminate=args.decontaminate,
        resume=not args.no_resume, state=state)
    state.wait_for_everyone()
    if state.is_main_process:
        examples = (config.per_device_batch_size * config.gradient_accumulation_steps
                    * state.num_processes)
        print(f"training.launch: done, {result.global_step} steps of {examples} examples "
              f"({state.num_processes} process(es)), train loss {result.train_loss}, "
              f"adapter {result.adapter_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
