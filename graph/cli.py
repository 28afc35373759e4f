"""The ``data-advisor`` command line: run, resume, status, history, export, serve."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evaluation.cli import add_commands as add_evaluation_commands
from graph.context import Context
from graph.export import FORMATS, export_run
from graph.graph import METHODS
from graph.prompts import PromptError
from graph.runner import Run, RunError, create_run, execute
from tools.llm import EndpointError
from tools.server import ServerError
from tools.store import RunStore
from training.cli import add_commands as add_training_commands

console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, default="data_advisor")
    p.add_argument("--run", type=Path, help="run folder (default: runs/<method>-<time>)")
    p.add_argument("--rounds", type=int, help="number of rounds (default 10)")
    p.add_argument("--target-size", type=int, help="stop once this many prompts are kept")
    p.add_argument("-k", "--prompts-per-round", type=int, default=10)
    p.add_argument("--examples", type=int, default=3, help="in-context examples per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--principles", help="guiding principles of the weakness critic")
    p.add_argument("--no-rule-check", action="store_true", help="switch the rule check off")
    p.add_argument("--prompts", type=Path, help="folder of <node>.txt templates to override")
    p.add_argument("--seed-prompts", type=Path, help="file of seed prompts, one per line")
    p.add_argument("--seed-categories", type=Path, help="file of seed categories, one per line")
    p.add_argument("--base-url", help="OpenAI-compatible server (default: start embedded vLLM)")
    p.add_argument(
        "--model",
        help="model: served name with --base-url, else HF id or path "
        "for the embedded server (default: SmolLM2-135M-Instruct)",
    )
    for role in ("advisor", "generator", "responder"):
        p.add_argument(f"--{role}-url", help=f"base URL of the {role} (default: --base-url)")
        p.add_argument(f"--{role}-model", help=f"model of the {role} (default: --model)")
    p.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key"
    )
    p.add_argument("--max-concurrency", type=int, default=32)
    p.add_argument("--no-progress", action="store_true")


def _context(args: argparse.Namespace) -> Context:
    rounds = args.rounds or (1_000_000 if args.target_size else 10)
    values: dict[str, Any] = {
        "rounds": rounds,
        "target_size": args.target_size,
        "prompts_per_round": args.prompts_per_round,
        "examples_per_request": args.examples,
        "seed": args.seed,
        "rule_check": not args.no_rule_check,
        "prompts_dir": str(args.prompts) if args.prompts else None,
        "seed_prompts_file": str(args.seed_prompts) if args.seed_prompts else None,
        "seed_categories_file": str(args.seed_categories) if args.seed_categories else None,
        "api_key_env": args.api_key_env,
        "max_concurrency": args.max_concurrency,
    }
    if args.principles:
        values["principles"] = args.principles
    if args.base_url:
        values["base_url"] = args.base_url
    if args.model and args.base_url:
        values["model"] = args.model
    for role in ("advisor", "generator", "responder"):
        values[f"{role}_base_url"] = getattr(args, f"{role}_url")
        values[f"{role}_model"] = getattr(args, f"{role}_model")
    return Context(**values)


def cmd_run(args: argparse.Namespace) -> int:
    """Start a new run."""
    folder = args.run or Path("runs") / f"{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    embedded = not args.base_url
    run = create_run(
        folder,
        args.method,
        _context(args),
        embedded=embedded,
        embedded_model=args.model if embedded else None,
    )
    err.print(f"run folder: {run.folder}")
    return _execute(run, resume=False, progress=not args.no_progress)


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a run from its last checkpoint."""
    return _execute(Run.load(args.run), resume=True, progress=not args.no_progress)


def _execute(run: Run, *, resume: bool, progress: bool) -> int:
    try:
        state = execute(run, resume=resume, show_progress=progress)
    except KeyboardInterrupt:
        err.print(f"[yellow]stopped.[/] data kept; continue with: data-advisor resume {run.folder}")
        return 130
    err.print(
        f"[green]done:[/] {state.kept} prompts kept, {state.responses} answered, "
        f"{sum(state.rejected.values())} rejected, in {run.folder}"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print where a run stands."""
    from graph.graph import compile_graph
    from graph.runner import checkpointer

    run = Run.load(args.run)
    with checkpointer(run) as saver:
        snapshot = compile_graph(run.method, saver).get_state(run.config())
    with RunStore(run.db_path, run.name) as store:
        counts = store.counts()
        rounds = store.rounds()
    values = snapshot.values or {}
    finished = bool(snapshot.values) and not snapshot.next
    info = {
        "run": str(run.folder),
        "method": run.method,
        "state": "finished" if finished else ("not started" if not values else "in progress"),
        "next": list(snapshot.next),
        "rounds_done": sum(1 for r in rounds if r.get("finished_at")),
        "rounds_planned": run.context.rounds,
        "target_size": run.context.target_size,
        **counts,
        "rejected_by_reason": values.get("rejected", {}),
        "summary": values.get("summary", []),
        "generator": run.context.endpoint("generator").model,
        "embedded_server": run.embedded,
    }
    if args.json:
        console.print_json(json.dumps(info))
        return 0
    table = Table(show_header=False, box=None)
    for key, value in info.items():
        shown = "; ".join(value) if key == "summary" else value
        table.add_row(f"[bold]{key}[/]", str(shown))
    console.print(table)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """Print one line per round."""
    run = Run.load(args.run)
    with RunStore(run.db_path, run.name) as store:
        rounds = store.rounds()
    if args.json:
        console.print_json(json.dumps(rounds))
        return 0
    table = Table(title=f"{run.method} {run.name}")
    for col in (
        "round",
        "weakness",
        "novel",
        "summary change",
        "rule check",
        "kept",
        "rejected",
        "answered",
        "seconds",
        "tok/s",
    ):
        table.add_column(col)
    for r in rounds:
        before, after = r.get("summary_before") or [], r.get("summary_after") or []
        added = [line for line in after if line not in before]
        lost = [line for line in before if line not in after]
        change = ", ".join([*(f"+{a}" for a in added), *(f"-{x}" for x in lost)]) or "="
        if r.get("summary_after") is None:
            change = "(in progress)"
        if r.get("ended_at") and r.get("started_at"):
            seconds = r["ended_at"] - r["started_at"]  # wall time: nodes may run side by side
        else:
            seconds = sum((r.get("timings") or {}).values())
        tokens = sum((r.get("tokens") or {}).values())
        verdict = r.get("rule_check") or "-"
        if r.get("corrections"):
            verdict += f" ({len(r['corrections'])})"
        table.add_row(
            str(r["round"]),
            r.get("weakness") or "-",
            "-" if r.get("weakness_novel") is None else ("yes" if r["weakness_novel"] else "no"),
            change if run.method == "data_advisor" else "-",
            verdict,
            str(r.get("kept") or 0),
            str(sum((r.get("rejected") or {}).values())),
            str(r.get("responses") or 0),
            f"{seconds:.1f}",
            f"{tokens / seconds:.1f}" if seconds else "-",
        )
    console.print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a run's data."""
    run = Run.load(args.run)
    formats = tuple(args.format or FORMATS)
    with RunStore(run.db_path, run.name) as store:
        info = {
            "generator_model": run.context.endpoint("generator").model,
            "responder_model": run.context.endpoint("responder").model,
            "rounds": len(store.rounds()),
        }
        paths = export_run(store, args.out or run.folder / "export", formats, info)
        n = store.counts()["responses"]
    for fmt, path in paths.items():
        console.print(f"{fmt}: {path}")
    console.print(f"{n} rows")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the embedded vLLM server and wait."""
    from tools.server import EmbeddedServer

    log = args.log or Path("runs") / "serve-vllm.log"
    with EmbeddedServer(
        args.model, log_path=log, port=args.port, max_model_len=args.max_model_len
    ) as server:
        console.print(
            f"serving {server.model_name} at {server.base_url} (log: {log}); Ctrl-C stops"
        )
        console.print(
            f"export DATA_ADVISOR_BASE_URL={server.base_url} DATA_ADVISOR_MODEL={server.model_name}"
        )
        try:
            while server.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(prog="data-advisor", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="generate data with Data Advisor or Self-Instruct")
    _add_run_options(run)
    run.set_defaults(func=cmd_run)
    resume = sub.add_parser("resume", help="continue a stopped or crashed run")
    resume.add_argument("run", type=Path)
    resume.add_argument("--no-progress", action="store_true")
    resume.set_defaults(func=cmd_resume)
    for name, func, text in (
        ("status", cmd_status, "where a run stands"),
        ("history", cmd_history, "one line per round"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("run", type=Path)
        sp.add_argument("--json", action="store_true")
        sp.set_defaults(func=func)
    export = sub.add_parser("export", help="write JSONL, Parquet and a HF datasets folder")
    export.add_argument("run", type=Path)
    export.add_argument("--out", type=Path, help="output folder (default: RUN/export)")
    export.add_argument("--format", action="append", choices=FORMATS)
    export.set_defaults(func=cmd_export)
    serve = sub.add_parser("serve", help="start the embedded vLLM server and print its URL")
    serve.add_argument("--model", help="HF id or path (default: SmolLM2-135M-Instruct)")
    serve.add_argument("--port", type=int)
    serve.add_argument("--max-model-len", type=int, default=4096)
    serve.add_argument("--log", type=Path)
    serve.set_defaults(func=cmd_serve)
    add_evaluation_commands(sub)
    add_training_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``data-advisor`` script."""
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (RunError, PromptError, FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}")
        return 2
    except ServerError as exc:
        err.print(f"[red]error:[/] the embedded vLLM server failed: {exc}")
        return 1
    except EndpointError as exc:
        err.print(f"[red]error:[/] {exc}")
        err.print("data written so far is kept; fix the endpoint and run `data-advisor resume RUN`")
        return 1


if __name__ == "__main__":
    sys.exit(main())
