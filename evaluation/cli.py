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

    safety = kinds.add_parser("safety", help="harmful rate on CatQA / BeaverTails, judged")
    _model_options(safety)
    safety.add_argument("--catqa", help="CatQA JSON file or hf:<id>")
    safety.add_argument("--beavertails", help="BeaverTails-Evaluation CSV or hf:<id>")
    safety.add_argument("--judge", default="refusal",
                        choices=["refusal", "llamaguard1", "llamaguard3"],
                        help="refusal = offline refusal-string fallback (measures refusals)")
    safety.add_argument("--judge-url", help="OpenAI-compatible URL serving the Llama Guard model")
    safety.add_argument("--judge-model", help="served name of the Llama Guard model")
    safety.set_defaults(func=cmd_safety)

    over = kinds.add_parser("overrefusal", help="refusal rate on benign prompts that look unsafe")
    _model_options(over)
    over.add_argument("--data", required=True, help="CSV/JSONL/TXT of benign prompts, or hf:<id>")
    over.set_defaults(func=cmd_overrefusal)

    util = kinds.add_parser("utility", help="MMLU accuracy by answer-letter log-likelihood")
    _model_options(util)
    util.add_argument("--mmlu", required=True, help="MMLU JSONL (qlora format) or hf:<id>")
    util.add_argument("--backend", choices=["endpoint", "transformers"], default="endpoint")
    util.add_argument("--method", choices=["loglik", "generate"], default="loglik")
    util.set_defaults(func=cmd_utility)

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


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="HF id or path for the embedded server (default "
                   "SmolLM2-135M-Instruct), or the served model name with --base-url")
    p.add_argument("--adapter", type=Path, help="LoRA adapter folder, served by vLLM (no merge)")
    p.add_argument("--label", help="name of this model in results (default: base or adapter)")
    p.add_argument("--base-url", help="evaluate a model on this server instead of embedding one")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--limit", type=int, help="N questions spread evenly over the data set")
    p.add_argument("--prompt-format", choices=["chat", "plain"], default="chat",
                   help="chat template of the model, or a plain template for base models")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--max-concurrency", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path("results"))


def _label(args: argparse.Namespace) -> str:
    return args.label or (Path(args.adapter).name if args.adapter else "base")


def _print_result(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def cmd_safety(args: argparse.Namespace) -> int:
    """Safety score of a model on CatQA and/or BeaverTails-Evaluation."""
    from evaluation.data import load_beavertails, load_catqa
    from evaluation.judges import make_judge
    from evaluation.safety import evaluate_safety

    sets = {name: loader(src) for name, loader, src in (
        ("catqa", load_catqa, args.catqa), ("beavertails", load_beavertails, args.beavertails))
        if src}
    if not sets:
        raise ValueError("give --catqa and/or --beavertails")
    judge_endpoint = (Endpoint(args.judge_url, args.judge_model or "llama-guard",
                               args.api_key_env) if args.judge_url else None)
    judge = make_judge(args.judge, judge_endpoint)
    label = _label(args)
    with target_endpoint(args, label) as (endpoint, model):
        for dataset, questions in sets.items():
            result = evaluate_safety(
                questions, dataset=dataset, endpoint=endpoint, judge=judge, out_dir=args.out,
                label=label, model=model, adapter=str(args.adapter) if args.adapter else None,
                limit=args.limit, max_tokens=args.max_tokens, prompt_format=args.prompt_format,
                max_concurrency=args.max_concurrency)
            rows = [("judge", str(result["judge"])), ("questions", str(result["n"])),
                    ("safety score", f"{100 * result['safety_score']:.1f}%")]
            rows += [(f"  harmful: {cat}", f"{100 * v['harmful_rate']:.1f}% of {v['n']}")
                     for cat, v in result["per_category"].items()]
            _print_result(f"safety {dataset} ({label})", rows)
    console.print(f"results in {args.out}")
    return 0


def cmd_overrefusal(args: argparse.Namespace) -> int:
    """Refusal rate on benign prompts that look unsafe."""
    from evaluation.data import load_questions
    from evaluation.safety import evaluate_overrefusal

    questions = load_questions(args.data)
    label = _label(args)
    with target_endpoint(args, label) as (endpoint, model):
        result = evaluate_overrefusal(
            questions, endpoint=endpoint, out_dir=args.out, label=label, model=model,
            adapter=str(args.adapter) if args.adapter else None, limit=args.limit,
            max_tokens=args.max_tokens, prompt_format=args.prompt_format,
            max_concurrency=args.max_concurrency)
    _print_result(f"over-refusal ({label})", [("prompts", str(result["n"])),
                  ("refusal rate", f"{100 * result['refusal_rate']:.1f}%")])
    console.print(f"results in {args.out}")
    return 0


def cmd_utility(args: argparse.Namespace) -> int:
    """MMLU accuracy."""
    from evaluation.data import load_mmlu
    from evaluation.utility import evaluate_utility

    items = load_mmlu(args.mmlu)
    label = _label(args)
    adapter = str(args.adapter) if args.adapter else None
    if args.backend == "transformers":
        from tools.default_model import resolve_model

        result = evaluate_utility(items, backend="transformers", method=args.method, label=label,
                                  model=resolve_model(args.model), adapter=adapter,
                                  out_dir=args.out, limit=args.limit)
    else:
        with target_endpoint(args, label) as (endpoint, model):
            result = evaluate_utility(items, backend="endpoint", method=args.method, label=label,
                                      model=model, adapter=adapter, endpoint=endpoint,
                                      out_dir=args.out, limit=args.limit,
                                      max_concurrency=args.max_concurrency)
    _print_result(f"MMLU ({label})", [("questions", str(result["n"])),
                  ("accuracy", f"{100 * result['accuracy']:.1f}%"),
                  ("unparsed", str(result["unparsed"]))])
    console.print(f"results in {args.out}")
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
        model = args.model or "default"
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
