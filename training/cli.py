"""``data-advisor train``: the training package's command (registered by :mod:`experiment.cli`).

``train`` mixes generated safety data (a run folder, an export or a data file) with instruction
data and trains a LoRA adapter on a target model (:func:`training.launch.train_adapter`,
resumable from its checkpoints) and prints a summary of the run.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from tools.helpformat import Subcommands, add_command
from training.launch import add_train_arguments, train_adapter, train_config

console = Console(width=None if sys.stdout.isatty() else 200)


def add_commands(sub: Subcommands) -> None:
    """Register ``train`` on the main parser."""
    train = add_command(
        sub, "train", "train a LoRA adapter on safety + instruction data",
        description="Mix generated safety data with instruction data (balanced, deduplicated, "
        "seeded shuffle,\nvalidation slice) and train a LoRA adapter on the target model; "
        "running it again resumes\nfrom the checkpoints in --out.",
        examples=[
            "data-advisor train --safety runs/da1 --instructions alpaca.json --out adapters/da1",
            "data-advisor train --safety runs/da1/export --instructions alpaca.json "
            "--ratio 0.5 --max-steps 200 --out adapters/half",
            "data-advisor train --safety runs/da1 --instructions alpaca.json --decontaminate "
            "catqa_english.json beavertails_evaluation.csv --out adapters/clean",
        ],
    )
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Train one adapter and print a short summary."""
    config = train_config(args)
    result, splits = train_adapter(
        args.safety, args.instructions, args.out, model=args.model, config=config,
        ratio=args.ratio, seed=args.seed, val_fraction=args.val_fraction,
        instructions_limit=args.instructions_limit, decontaminate=args.decontaminate,
        resume=not args.no_resume)
    counts = splits.counts()
    last = ", ".join(f"{e['loss']:.4f}" for e in result.history["train"][-3:]) or "-"
    rows = [
        ("train examples", _counts(counts["train"])),
        ("validation examples", _counts(counts["validation"])),
        ("dropped as contaminated", _counts(counts["contaminated"])
         + ("" if args.decontaminate else " (no --decontaminate)")),
        ("steps", f"{result.global_step}"
         + (f" (resumed from {result.start_step})" if result.resumed_from else "")),
        ("last train losses", last),
        ("validation loss", "-" if result.eval_loss is None else f"{result.eval_loss:.4f}"),
        ("tokens/s", f"{result.tokens_seen / result.train_runtime_s:.1f}"
         if result.train_runtime_s else "-"),
        ("adapter", str(result.adapter_dir)),
        ("loss plot", str(result.plot_path or "-")),
    ]
    table = Table(title="LoRA training", show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    return 0


def _counts(by_source: dict[str, int]) -> str:
    total = sum(by_source.values())
    parts = ", ".join(f"{k} {v}" for k, v in sorted(by_source.items()))
    return f"{total} ({parts})" if parts else "0"
