"""``data-advisor train`` and ``data-advisor experiment``: one LoRA adapter, or the whole paper.

``train`` mixes generated safety data (a run folder, an export or a data file) with instruction
data and trains a LoRA adapter on a target model (resumable from its checkpoints).
``experiment CONFIG`` runs :func:`training.experiment.run_experiment`: generation with Data
Advisor and Self-Instruct, one adapter per data set, safety / over-refusal / MMLU evaluation of
the base model and both adapters, diversity, and the report; running it again continues.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tools.helpformat import add_command
from training.experiment import STAGES
from training.launch import add_train_arguments, train_config

console = Console(width=None if sys.stdout.isatty() else 200)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``experiment`` on the main parser."""
    train = add_command(
        sub, "train", "train a LoRA adapter on safety + instruction data",
        description="Mix generated safety data with instruction data (balanced, deduplicated, "
        "seeded shuffle,\nvalidation slice) and train a LoRA adapter on the target model; "
        "running it again resumes\nfrom the checkpoints in --out.",
        examples=[
            "data-advisor train --safety runs/da1 --instructions alpaca.json --out adapters/da1",
            "data-advisor train --safety runs/da1/export --instructions alpaca.json "
            "--ratio 0.5 --max-steps 200 --out adapters/half",
        ],
    )
    add_train_arguments(train)
    train.add_argument("--instructions-limit", type=int,
                       help="draw at most this many instruction examples first (default: all)")
    train.set_defaults(func=cmd_train)

    exp = add_command(
        sub, "experiment", "the paper's experiment: generate, train, evaluate, report "
        "(resumes when run again)",
        description="Data Advisor and Self-Instruct generation with the same budget, one LoRA "
        "adapter per data set,\nsafety / over-refusal / MMLU of the base model and both "
        "adapters, diversity, and the report.\nA stage whose output exists is skipped, so "
        "running it again continues.",
        examples=[
            "data-advisor experiment configs/cpu-small.toml",
            "data-advisor experiment configs/paper.toml --out results/paper --until generation",
        ],
    )
    exp.add_argument("config", type=Path, help="TOML config (YAML with PyYAML), e.g. "
                     "configs/cpu-small.toml")
    exp.add_argument("--out", type=Path, help="output folder (default: the config's out_dir)")
    exp.add_argument("--until", choices=STAGES, help="stop after this stage (e.g. generation, "
                     "to stop the generation servers before training; default: run them all)")
    exp.add_argument("--no-progress", action="store_true",
                     help="no progress bars (default: shown)")
    exp.set_defaults(func=cmd_experiment)


def cmd_train(args: argparse.Namespace) -> int:
    """Train one adapter and print a short summary."""
    from training.experiment import train_adapter

    config = train_config(args)
    result, splits = train_adapter(
        args.safety, args.instructions, args.out, model=args.model, config=config,
        ratio=args.ratio, seed=args.seed, val_fraction=args.val_fraction,
        instructions_limit=args.instructions_limit, resume=not args.no_resume)
    counts = splits.counts()
    last = ", ".join(f"{e['loss']:.4f}" for e in result.history["train"][-3:]) or "-"
    rows = [
        ("train examples", _counts(counts["train"])),
        ("validation examples", _counts(counts["validation"])),
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


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run or continue an experiment."""
    from training.experiment import run_experiment

    try:
        result = run_experiment(args.config, out_dir=args.out, progress=not args.no_progress,
                                until=args.until)
    except KeyboardInterrupt:
        console.print("[yellow]stopped.[/] what is done is kept; run the same command again to "
                      "continue")
        return 130
    summary = summary_table(result.results_dir)
    if summary is not None:
        console.print(summary)
    if result.report.is_file():
        console.print(f"report: {result.report}")
    return 0


def summary_table(results_dir: Path) -> Table | None:
    """Per model: safety score per data set, over-refusal and MMLU accuracy (None if no
    results)."""
    columns: dict[str, str] = {}
    cells: dict[str, dict[str, str]] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            result = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(result, dict):
            continue
        kind, label = result.get("kind"), result.get("label")
        if kind == "safety":
            column, value = f"safety {result['dataset']}", result["safety_score"]
        elif kind == "overrefusal":
            column, value = f"over-refusal {result['dataset']}", result["refusal_rate"]
        elif kind == "utility":
            column, value = "MMLU", result["accuracy"]
        else:
            continue
        columns[column] = column
        cells.setdefault(str(label), {})[column] = f"{100 * value:.1f}%"
    if not cells:
        return None
    table = Table(title="results")
    table.add_column("model")
    rank = {"safety catqa": 0, "safety beavertails": 1, "MMLU": 9}
    columns = dict.fromkeys(sorted(columns, key=lambda c: (rank.get(c, 5), c)))
    for column in columns:
        table.add_column(column)
    order = ["base", "self_instruct", "data_advisor"]
    for label in sorted(cells, key=lambda x: (order.index(x) if x in order else 9, x)):
        table.add_row(label, *(cells[label].get(c, "-") for c in columns))
    return table
