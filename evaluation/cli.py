"""``data-advisor eval ...`` and ``data-advisor report``: one command per measurement.

Each command prints a short table, writes its JSON result(s) into ``--out`` (default
``results/``) and says where the files are. Safety, over-refusal and utility evaluate a model
served by any OpenAI-compatible server (``--base-url``), or start the embedded vLLM server with
``--model`` (an HF id or path; default SmolLM2-135M-Instruct) and an optional LoRA ``--adapter``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tools.llm import Endpoint

console = Console(width=None if sys.stdout.isatty() else 200)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``eval`` (with its sub-commands) and ``report`` on the main parser."""
    ev = sub.add_parser("eval", help="measure diversity, safety, over-refusal or utility")
    kinds = ev.add_subparsers(dest="kind", required=True)

    div = kinds.add_parser("diversity", help="distinct-n, categories, near-duplicates")
    div.add_argument("sources", nargs="+", help="run folders, exports, prompt files, hf:<id>")
    div.add_argument("--size", type=int, help="also compare at this equal number of prompts")
    div.add_argument("--seeds", type=int, default=5, help="subsamples for --size")
    div.add_argument("--out", type=Path, default=Path("results"))
    div.set_defaults(func=cmd_diversity)

    rep = sub.add_parser("report", help="Markdown tables and PNG plots from result files")
    rep.add_argument("results", nargs="+", type=Path, help="result JSON files or folders")
    rep.add_argument("--out", type=Path, default=Path("results") / "report")
    rep.set_defaults(func=cmd_report)


def cmd_diversity(args: argparse.Namespace) -> int:
    """Diversity of one or more data sets."""
    from evaluation.diversity import evaluate_diversity, write_result

    table = Table(title="distinct-n" + (f" (at {args.size} prompts)" if args.size else ""))
    table.add_column("data set")
    table.add_column("prompts")
    for n in range(1, 9):
        table.add_column(f"d-{n}")
    table.add_column("categories")
    table.add_column("near-dup")
    for source in args.sources:
        result = evaluate_diversity(source, size=args.size, seeds=args.seeds)
        path = write_result(result, args.out)
        curve = (result["distinct_at_size"] or {}).get("values") or result["distinct"]
        table.add_row(result["name"], str(result["n_prompts"]),
                      *(f"{curve[str(n)]:.3f}" for n in range(1, 9)), str(result["categories"]),
                      f"{result['near_duplicate_rate']:.3f}")
        console.print(f"wrote {path}")
    console.print(table)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Build the report."""
    from evaluation.report import build_report

    files: list[Path] = []
    for item in args.results:
        files.extend(sorted(item.glob("*.json")) if item.is_dir() else [item])
    if not files:
        raise FileNotFoundError(f"no result files in {', '.join(map(str, args.results))}")
    path = build_report(files, args.out)
    console.print(f"report: {path}")
    return 0


@contextmanager
def target_endpoint(args: argparse.Namespace, label: str) -> Iterator[tuple[Endpoint, str]]:
    """The endpoint of the model under evaluation, starting the embedded server if needed.

    Yields the endpoint and the model's display name. With ``--adapter``, the embedded server
    serves the LoRA adapter under the name ``label`` and the endpoint targets it.
    """
    if args.base_url:
        model = args.served_model or args.model or "default"
        yield Endpoint(args.base_url, model, args.api_key_env), model
        return
    from tools.server import EmbeddedServer

    lora: dict[str, Any] | None = {label: str(args.adapter)} if args.adapter else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with EmbeddedServer(args.model, log_path=out / f"vllm-{label}.log",
                        lora_modules=lora) as server:
        name = label if args.adapter else server.model_name
        yield Endpoint(server.base_url, name, args.api_key_env), server.model_name
