"""The ``data-advisor`` command: its root parser, :func:`main` and the ``experiment`` command.

This is the top layer: :func:`parser` registers every package's commands (generation from
:mod:`graph.cli`, ``eval`` from :mod:`evaluation.cli`, ``train`` from :mod:`training.cli`, and
``experiment`` here), and :func:`main` turns the errors a user can fix into one line and an
exit status (2: bad input or storage, 1: a server failed, 130: interrupted) instead of a
traceback. ``python -m experiment.cli`` is the same as the ``data-advisor`` script.

``experiment CONFIG`` runs :func:`experiment.stages.run_experiment`: generation with Data
Advisor and Self-Instruct, one adapter per data set, safety / over-refusal / MMLU evaluation of
the base model and both adapters, diversity, and the report; running it again continues.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evaluation.cli import add_commands as add_evaluation_commands
from experiment.stages import STAGES, run_experiment
from graph.cli import add_commands as add_generation_commands
from graph.runner import RunError, storage_error
from graph.templates import TemplateError
from tools.helpformat import HelpFormatter, Subcommands, add_command
from tools.llm import EndpointError
from tools.server import ServerError
from training.cli import add_commands as add_training_commands

console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)

DESCRIPTION = """\
data-advisor: safety-alignment data by dynamic data curation (Data Advisor, arXiv 2410.05269).

It generates harmful prompts with safe responses (Data Advisor or the Self-Instruct baseline)
against any OpenAI-compatible server, or an embedded vLLM server it starts itself, trains LoRA
adapters on the data, evaluates models (safety, over-refusal, utility, diversity) and reports.
"""

TOP_EXAMPLES = """\
examples:
  data-advisor run --rounds 3 --run runs/da1        # generate with the embedded SmolLM2
  data-advisor history runs/da1                     # what each round did
  data-advisor export runs/da1                      # JSONL, Parquet, HF datasets folder
  data-advisor train --safety runs/da1 --instructions alpaca.json --out adapters/da1
  data-advisor eval diversity runs/da1 runs/si1
  data-advisor experiment configs/cpu-small.toml    # generate, train, evaluate, report

`data-advisor COMMAND --help` explains each command's options, with their defaults."""


def parser() -> argparse.ArgumentParser:
    """The ``data-advisor`` argument parser, with every package's commands."""
    p = argparse.ArgumentParser(
        prog="data-advisor", description=DESCRIPTION, epilog=TOP_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_generation_commands(sub)
    add_evaluation_commands(sub)
    add_training_commands(sub)
    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``data-advisor`` script."""
    p = parser()
    args, unknown = p.parse_known_args(argv)
    if unknown and args.command == "resume":
        err.print(
            f"[red]error:[/] resume changes only where the servers are (--base-url, --model, "
            f"--<role>-url, --<role>-model, --api-key-env) and how long to wait for them "
            f"(--request-timeout, --max-retries, --node-timeout), not {' '.join(unknown)}; "
            "start a new run with `data-advisor run` to change anything else",
            highlight=False,
        )
        return 2
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        status: int = args.func(args)  # every command's function returns its exit status
        return status
    except (RunError, TemplateError, FileNotFoundError, ValueError) as exc:
        err.print("[red]error:[/] ", end="")
        err.print(str(exc), markup=False, highlight=False)  # user values may hold brackets
        return 2
    except ServerError as exc:
        err.print(f"[red]error:[/] the embedded vLLM server failed: {exc}")
        return 1
    except EndpointError as exc:
        err.print(f"[red]error:[/] {exc}")
        folder = getattr(args, "run", None) or "RUN"
        err.print(
            f"data written so far is kept; fix the endpoint and run `data-advisor resume "
            f"{folder}`, or if the server moved: `data-advisor resume {folder} --base-url URL` "
            f"(or --{exc.role}-url URL)",
            highlight=False,
        )
        return 1
    except (sqlite3.DatabaseError, OSError) as exc:  # corrupt or unwritable file, full disk
        message = storage_error(exc, _paths_of(args), resume=_resumable(args))
        if message is None:
            raise
        err.print(f"[red]error:[/] {message}", highlight=False)
        return 2


def _paths_of(args: argparse.Namespace) -> list[Path]:
    """The files and folders a command was given (where a bad SQLite file may be)."""
    values: list[Any] = []
    for value in vars(args).values():
        values += value if isinstance(value, list) else [value]
    return [Path(v) for v in values if isinstance(v, Path)
            or (isinstance(v, str) and v and not v.startswith("hf:") and Path(v).exists())]


def _resumable(args: argparse.Namespace) -> Path | None:
    """The run folder to resume after a storage failure of ``run`` or ``resume``."""
    folder = getattr(args, "run", None)
    if args.command in ("run", "resume") and folder and (Path(folder) / "run.json").is_file():
        return Path(folder)
    return None


def add_commands(sub: Subcommands) -> None:
    """Register ``experiment`` on the main parser."""
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


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run or continue an experiment."""
    try:
        result = run_experiment(args.config, out_dir=args.out, progress=not args.no_progress,
                                until=args.until)
    except KeyboardInterrupt:
        console.print("[yellow]stopped.[/] what is done is kept; run the same command again to "
                      "continue")
        return 130
    summary = summary_table(result.result_files)
    if summary is not None:
        console.print(summary)
    if result.report.is_file():
        console.print(f"report: {result.report}")
    return 0


def summary_table(files: Path | list[Path]) -> Table | None:
    """Per model (per target, when the results name one): safety score per data set,
    over-refusal and MMLU accuracy (None if no results; files that hold none are left out).
    ``files``: result files, or a folder of them."""
    from evaluation.results import OverrefusalResult, SafetyResult, UtilityResult, read_results

    columns: dict[str, str] = {}
    cells: dict[str, dict[str, str]] = {}
    for result in read_results(files)[0].values():
        if isinstance(result, SafetyResult):
            column = f"safety {result.dataset}"
        elif isinstance(result, OverrefusalResult):
            column = f"over-refusal {result.dataset}"
        elif isinstance(result, UtilityResult):
            column = "MMLU"
        else:
            continue  # diversity: in the report
        value = result.score
        columns[column] = column
        model = str(result.label) if result.target is None else f"{result.target}: {result.label}"
        cells.setdefault(model, {})[column] = (
            "-" if value is None else f"{100 * value:.1f}%")
    if not cells:
        return None
    table = Table(title="results")
    table.add_column("model")
    rank = {"safety catqa": 0, "safety beavertails": 1, "MMLU": 9}
    ordered = sorted(columns, key=lambda c: (rank.get(c, 5), c))
    for column in ordered:
        table.add_column(column)
    order = ["base", "self_instruct", "data_advisor"]

    def rank_of(model: str) -> tuple[str, int, str]:
        target, _, label = model.rpartition(": ")
        return (target, order.index(label) if label in order else 9, label)

    for label in sorted(cells, key=rank_of):
        table.add_row(label, *(cells[label].get(c, "-") for c in ordered))
    return table


if __name__ == "__main__":
    sys.exit(main())
