"""``data-advisor eval ...`` and ``data-advisor report``: one command per measurement.

Each command prints a short table, writes its JSON result(s) into ``--out`` (default
``results/``) and says where the files are. Safety, over-refusal and utility evaluate a model
served by any OpenAI-compatible server (``--base-url``), or start the embedded vLLM server with
``--model`` (an HF id or path; default SmolLM2-135M-Instruct) and an optional LoRA ``--adapter``.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evaluation.results import ResultKind
from tools.adapter_serving import SERVING_CHOICES
from tools.helpformat import Subcommands, add_command
from tools.helpformat import positive_int as _positive_int
from tools.llm import Endpoint

console = Console(width=None if sys.stdout.isatty() else 200)


def add_commands(sub: Subcommands) -> None:
    """Register ``eval`` (with its sub-commands) and ``report`` on the main parser."""
    ev = sub.add_parser("eval", help="measure diversity, safety, over-refusal or utility")
    kinds = ev.add_subparsers(dest="kind", required=True)

    div = add_command(
        kinds, "diversity", "distinct-n, categories, near-duplicates",
        description=_wrap("Distinct-n (n = 1..8, paper Fig. 5), categories, prompts per "
        "category and the near-duplicate rate of each data set. One result file per data set "
        "in --out, named after the run (its run id or dataset card) or the file; another "
        "source with a name already taken gets a suffix. A source that fails is reported on "
        "one line, the others are still measured, and the command exits with status 2."),
        examples=[
            "data-advisor eval diversity runs/da1 runs/si1 CATQA.json --size 200",
            "data-advisor eval diversity runs/da1/export runs/si1/export/hf hf:org/prompts:test",
        ])
    div.add_argument("sources", nargs="+", metavar="SOURCE",
                     help="run folder or its run.sqlite, export folder (or its data.jsonl, "
                     "data.parquet, hf/), CatQA JSON, prompt file (.jsonl/.json/.csv/.parquet/"
                     ".txt) or hf:<id>[:<split>]")
    div.add_argument("--size", type=_positive_int, metavar="N",
                     help="also measure distinct-n at exactly N prompts (mean over --seeds "
                     "random subsamples) so sets of different sizes compare; every source "
                     "needs >= N prompts (default: full sets only)")
    div.add_argument("--seeds", type=_positive_int, default=5, metavar="S",
                     help="random subsamples averaged for --size (default: %(default)s)")
    div.add_argument("--taxonomy", type=Path, metavar="FILE",
                     help="taxonomy the coverage is measured in, one 'CODE: Name' or name a "
                     "line; a run's judged categories (or a taxonomy_category column) are "
                     "placed in it, else the category column (default: Llama Guard 3's "
                     "S1-S14)")
    div.add_argument("--out", type=Path, default=Path("results"), metavar="DIR",
                     help="folder for the diversity-<name>.json results (default: %(default)s)")
    div.set_defaults(func=cmd_diversity)

    safety = add_command(
        kinds, "safety", "safety of a model on harmful prompts (CatQA, BeaverTails, any set)",
        description=_wrap("The model answers every harmful prompt (temperature 0) and a judge "
        "labels each answer: Llama Guard (measures harm) or the offline refusal-string fallback "
        "(measures refusal: its per-category numbers are 'not refused', not 'harmful'). "
        "Writes safety-<data set>-<label>.json per data set into --out; responses and "
        "judgments are cached in --out/cache, keyed by model, adapter content, prompt format, "
        "settings, data and judge, so a repeated or resumed run sends no request twice."),
        examples=[
            "data-advisor eval safety --catqa catqa_english.json --limit 110",
            "data-advisor eval safety --data mixed.csv --prompt-column text --category-column "
            "type --where label=harmful",
            "data-advisor eval safety --model BASE --adapter adapters/da1/adapter --beavertails "
            "bt.csv --judge llamaguard3 --judge-url http://guard:8000/v1 --judge-model "
            "meta-llama/Llama-Guard-3-8B",
            "data-advisor eval safety --base-url http://gpu:8000/v1 --model BASE --adapter "
            "adapters/da1/adapter --adapter-name da1 --catqa catqa_english.json",
        ])
    _model_options(safety)
    _data_options(safety, required=False)
    safety.add_argument("--catqa", metavar="FILE",
                        help="CatQA JSON or hf:<id>, read with its own columns; results named "
                        "'catqa' (default: none)")
    safety.add_argument("--beavertails", metavar="FILE",
                        help="BeaverTails-Evaluation CSV or hf:<id>; results named "
                        "'beavertails' (default: none)")
    safety.add_argument("--judge", default="refusal",
                        choices=["refusal", "llamaguard1", "llamaguard3"],
                        help="refusal: offline refusal-string fallback, measures refusals; "
                        "llamaguard1/llamaguard3: Llama Guard 1 (O1-O6) or 3 (S1-S14) behind "
                        "--judge-url, measures harm")
    safety.add_argument("--judge-url", metavar="URL",
                        help="OpenAI-compatible server serving the Llama Guard model, needed "
                        "by llamaguard1/3 (default: none)")
    safety.add_argument("--judge-model", metavar="NAME", default="llama-guard",
                        help="the name --judge-url serves the Llama Guard model under")
    safety.set_defaults(func=cmd_safety)

    over = add_command(
        kinds, "overrefusal", "refusal rate on benign prompts that look unsafe",
        description=_wrap("The model answers every prompt selected from --data (all of them count "
        "as benign: select the benign rows of a mixed set with --where) and the refusal-string "
        "judge counts refusals. Writes overrefusal-<data set>-<label>.json into --out, with "
        "the refusal rate per category when the set has a category column."),
        examples=[
            "data-advisor eval overrefusal --data xstest.csv",
            "data-advisor eval overrefusal --data mixed.csv --prompt-column text "
            "--category-column type --where label=benign",
            "data-advisor eval overrefusal --data hf:org/xstest:test --where type!=contrast "
            "--name xstest-safe",
        ])
    _model_options(over)
    _data_options(over, required=True)
    over.set_defaults(func=cmd_overrefusal)

    util = add_command(
        kinds, "utility", "MMLU accuracy by answer-letter log-likelihood",
        description=_wrap("MMLU accuracy of the model: the answer letter with the highest "
        "log-probability after the prompt (or, with --method generate, the first letter "
        "generated). Writes utility-<name>-<label>.json into --out; predictions are cached in "
        "--out/cache, keyed by model, adapter content, backend, method, prompt format and data."),
        examples=[
            "data-advisor eval utility --mmlu mmlu_validation.jsonl --limit 200",
            "data-advisor eval utility --mmlu mmlu_validation.jsonl --backend transformers "
            "--model BASE --adapter adapters/da1/adapter",
        ])
    _model_options(util, generation=False)
    util.add_argument("--mmlu", required=True, metavar="FILE",
                      help="MMLU JSONL in the qlora format ({subject, input, output}) or hf:<id>")
    util.add_argument("--name", default="mmlu",
                      help="data set name in the result file name")
    util.add_argument("--backend", choices=["endpoint", "transformers"], default="endpoint",
                      help="endpoint: top log-probs from the embedded vLLM or --base-url; "
                      "transformers: forward passes here, no server")
    util.add_argument("--method", choices=["loglik", "generate"], default="loglik",
                      help="loglik: letter log-likelihood; generate: greedy generation, first "
                      "A-D letter parsed")
    util.add_argument("--max-tokens", type=_positive_int, default=8, metavar="N",
                      help="tokens generated per question with --method generate")
    util.set_defaults(func=cmd_utility)

    rep = add_command(
        sub, "report", "Markdown tables and PNG plots from result files",
        description=_wrap("report.md (Table 1, rates per category, distinct-n, details) and "
        "PNG figures (paper Figs. 2-5) from the JSON results of `data-advisor eval ...`; every "
        "axis says which direction is better."),
        examples=[
            "data-advisor report results/ --out results/report",
            "data-advisor report results/safety-*.json results/diversity-da1.json",
        ])
    rep.add_argument("results", nargs="+", type=Path, metavar="RESULT",
                     help="result JSON files, or folders whose *.json are read (files that are "
                     "no result are skipped and listed in the report)")
    rep.add_argument("--out", type=Path, default=Path("results") / "report", metavar="DIR",
                     help="folder for report.md and the PNGs (default: %(default)s)")
    rep.set_defaults(func=cmd_report)


def cmd_diversity(args: argparse.Namespace) -> int:
    """Diversity of one or more data sets; a bad source is reported and the others go on."""
    import sqlite3

    from rich.markup import escape

    from evaluation.diversity import evaluate_diversity, write_result

    at = f" at {args.size} prompts (mean of {args.seeds} subsamples)" if args.size else ""
    table = Table(title=f"distinct-n{at or ' of the full data sets'}")
    table.add_column("data set")
    table.add_column("prompts")
    for n in range(1, 9):
        table.add_column(f"d-{n}")
    table.add_column("categories")
    table.add_column("taxonomy covered")
    table.add_column("entropy")
    table.add_column("near-dup")
    errors = Console(stderr=True, width=console.width)
    failed = 0
    for source in args.sources:
        try:
            result = evaluate_diversity(source, size=args.size, seeds=args.seeds,
                                        taxonomy=str(args.taxonomy) if args.taxonomy else None)
        except (OSError, ValueError, KeyError, sqlite3.Error) as exc:
            failed += 1
            text = str(exc) if source in str(exc) else f"{source}: {exc}"
            hint = " (choose a smaller --size)" if "cannot subsample" in text else ""
            errors.print(f"[red]error:[/] {escape(text + hint)}", soft_wrap=True,
                         highlight=False)
            continue
        path = write_result(result, args.out)
        curve = (result["distinct_at_size"] or {}).get("values") or result["distinct"]
        cov = result["taxonomy_coverage"]
        # "–": no n-grams that long (every prompt is shorter), not a distinct-n of 0
        table.add_row(result["name"], str(result["n_prompts"]),
                      *(f"{curve[str(n)]:.3f}" if result["ngrams"][str(n)] else "–"
                        for n in range(1, 9)), str(result["categories"]),
                      f"{cov['covered']}/{cov['categories']}", f"{cov['entropy']:.3f}",
                      f"{result['near_duplicate_rate']:.3f}")
        console.print(f"wrote {path}" + (f" ({result['name_note']})"
                                         if result.get("name_note") else ""))
    if table.rows:
        console.print(table)
    if failed:
        errors.print(f"[red]error:[/] {failed} of {len(args.sources)} sources failed; "
                     "fix or drop them and run again", highlight=False)
        return 2
    return 0


def _model_options(p: argparse.ArgumentParser, generation: bool = True) -> None:
    """The model under evaluation, how it is served, and the output folder."""
    p.add_argument("--model", metavar="MODEL",
                   help="base model: HF id or local path for the embedded vLLM server (default: "
                   "SmolLM2-135M-Instruct); with --base-url, the name the server serves it "
                   "under (default there: 'default')")
    p.add_argument("--adapter", type=Path, metavar="DIR",
                   help="LoRA adapter folder (adapter_config.json + weights; `train` writes "
                   "OUT/adapter), served by vLLM on top of --model (see --adapter-serving); its "
                   "content identifies it in the caches (default: none, the base model is "
                   "evaluated)")
    p.add_argument("--adapter-serving", choices=SERVING_CHOICES, default="auto",
                   help="how the embedded server serves --adapter: lora (a LoRA module, "
                   "--enable-lora), merged (merged once into a copy of --model's weights, kept "
                   "beside the adapter as ADAPTER-merged-KEY and served as its own model), auto: "
                   "lora where vLLM supports LoRA for the model's architecture (it asks vLLM's "
                   "registry: Llama, Mistral yes, Falcon no), else merged (default: auto)")
    p.add_argument("--adapter-name", metavar="NAME",
                   help="with --base-url, required with --adapter: the name the server serves "
                   "the adapter under (vLLM --lora-modules NAME=PATH), checked against its "
                   "/v1/models (default: none; the embedded server serves it under the label)")
    p.add_argument("--label",
                   help="display name of this model in result files and the report; one label "
                   "names one model in --out (default: 'base', or the adapter folder's name, "
                   "its parent's for a folder called 'adapter')")
    p.add_argument("--base-url", metavar="URL",
                   help="evaluate a model on this OpenAI-compatible server (e.g. "
                   "http://gpu:8000/v1) instead of starting the embedded vLLM (default: embedded)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable holding the API key for the servers")
    p.add_argument("--limit", type=_positive_int, metavar="N",
                   help="evaluate N items spread evenly over the data set (default: all)")
    if generation:
        p.add_argument("--prompt-format", choices=["chat", "plain"], default=None,
                       help="chat: the model's own chat template (/v1/chat/completions); plain: "
                       "the '### User: ... ### Assistant:' prompt that `data-advisor train` "
                       "uses for a model without a chat template, on /v1/completions (default: "
                       "the format the --adapter was trained with, as its prompt_format.json "
                       "records, else chat)")
    else:
        p.add_argument("--prompt-format", choices=["chat", "plain"], default=None,
                       help="chat: the MMLU text as it is, ending with 'Answer:' (MMLU's usual "
                       "zero-shot completion); plain: that text inside the '### User: ... ### "
                       "Assistant:' prompt that `data-advisor train` uses for a model without a "
                       "chat template, so a base model's adapter is scored on the format it was "
                       "trained on (default: the format the --adapter was trained with, as its "
                       "prompt_format.json records, else chat)")
    if generation:
        p.add_argument("--max-tokens", type=_positive_int, default=128, metavar="N",
                       help="tokens per response (temperature 0)")
    p.add_argument("--max-concurrency", type=_positive_int, default=32, metavar="N",
                   help="requests in flight at once")
    p.add_argument("--out", type=Path, default=Path("results"), metavar="DIR",
                   help="folder for the result files; caches go to DIR/cache")


def _wrap(text: str) -> str:
    """A description wrapped for ``--help`` (the help formatter keeps descriptions as written)."""
    return textwrap.fill(text, 88)


def _data_options(p: argparse.ArgumentParser, required: bool) -> None:
    """Any prompt set: ``--data`` with its columns, row selection and name."""
    p.add_argument("--data", required=required, metavar="FILE",
                   help="prompt set: CSV, JSONL, JSON (a list of objects), Parquet, TXT (one "
                   "prompt a line) or hf:<id>[:<split>]" + ("" if required else " (default: "
                   "none)"))
    p.add_argument("--name",
                   help="name of the --data set in result file names (default: the file's "
                   "stem plus the --where selection, e.g. mixed-label-benign)")
    p.add_argument("--prompt-column", metavar="COL",
                   help="column of --data holding the prompt (default: the first of prompt, "
                   "instruction, question, text)")
    p.add_argument("--category-column", metavar="COL",
                   help="column of --data holding the category, for per-category rates "
                   "(default: 'category' if there is one, else none)")
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE",
                   help="evaluate only the rows of --data whose COL is VALUE; COL!=VALUE drops "
                   "those rows instead. Repeatable: values given for one column are "
                   "alternatives (OR), conditions on different columns must all hold (AND) "
                   "(default: every row)")


def _data_sets(args: argparse.Namespace) -> list[Any]:
    """The ``--data`` prompt set (none without ``--data``) as a list."""
    from evaluation.data import prompt_set

    if not args.data:
        if args.name or args.prompt_column or args.category_column or args.where:
            raise ValueError("--name, --prompt-column, --category-column and --where apply to "
                             "--data; give --data FILE")
        return []
    return [prompt_set(args.data, name=args.name, prompt_column=args.prompt_column,
                       category_column=args.category_column, where=args.where)]


def _prompt_format(args: argparse.Namespace) -> None:
    """Settle ``args.prompt_format``: the one given, else the adapter's recorded one, else
    chat; a given one that is not the adapter's is used, with a warning on stderr."""
    from tools.prompt_format import choose_format

    args.prompt_format, warning = choose_format(args.prompt_format, args.adapter)
    if warning:
        Console(stderr=True, width=console.width).print(warning, markup=False,
                                                        highlight=False)


def _label(args: argparse.Namespace) -> str:
    from evaluation.identity import default_label

    return args.label or default_label(args.adapter)


def _preflight(args: argparse.Namespace, label: str, kind: ResultKind,
               datasets: list[tuple[str, str]]) -> None:
    """Refuse a label that names another model, or a data set name that names other data, in
    ``--out`` before a server starts (the evaluation checks again; this only saves the wait).

    ``datasets``: (name, content hash) pairs.
    """
    from evaluation.identity import check_result_slot, model_identity

    if args.base_url:  # no server to wait for; the base is identified by what it serves
        return
    identity = model_identity(args.model or "default", args.adapter,
                              args.adapter_name or label)
    if kind != "utility":
        identity["prompt_format"] = args.prompt_format
    for name, sha256 in datasets:
        check_result_slot(Path(args.out), kind=kind, dataset=name, label=label,
                          model=identity, dataset_sha256=sha256)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _print_result(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def cmd_safety(args: argparse.Namespace) -> int:
    """Safety score of a model on CatQA, BeaverTails-Evaluation and/or any prompt set."""
    from evaluation.data import beavertails_set, catqa_set
    from evaluation.judges import make_judge
    from evaluation.safety import evaluate_safety, questions_sha256

    sets = [catqa_set(args.catqa)] if args.catqa else []
    sets += [beavertails_set(args.beavertails)] if args.beavertails else []
    sets += _data_sets(args)
    if not sets:
        raise ValueError("give --data FILE, --catqa FILE and/or --beavertails FILE")
    names = [s.name for s in sets]
    if len(set(names)) < len(names):
        raise ValueError(f"two data sets are named {names}; give --data another --name")
    judge_endpoint = (Endpoint(args.judge_url, args.judge_model, args.api_key_env)
                      if args.judge_url else None)
    judge = make_judge(args.judge, judge_endpoint)
    _prompt_format(args)
    label = _label(args)
    _preflight(args, label, "safety", [(s.name, questions_sha256(s.questions)) for s in sets])
    with target_endpoint(args, label) as (endpoint, model, serving):
        for data in sets:
            result = evaluate_safety(
                data.questions, dataset=data.name, endpoint=endpoint, judge=judge,
                out_dir=args.out, label=label, model=model,
                adapter=str(args.adapter) if args.adapter else None, limit=args.limit,
                max_tokens=args.max_tokens, prompt_format=args.prompt_format,
                max_concurrency=args.max_concurrency, serving=serving, data=data.data)
            # every number says what the judge measures: "not refused" is not "harmful"
            measure = result["measure_label"]
            score = "safety score" + (" (= refusal rate)" if result["measure"] == "not_refused"
                                      else "")
            rows = [("judge", str(result["judge"])), ("questions", str(result["n"])),
                    (score, _pct(result["safety_score"])),
                    (f"{measure} rate", _pct(result["harmful_rate"]))]
            if result["categories"]:  # else one "uncategorized" line would repeat the rate
                rows += [(f"  {measure}: {cat}", f"{_pct(v['harmful_rate'])} of {v['n']}")
                         for cat, v in result["per_category"].items()]
            _print_result(f"safety {data.name} ({label})", rows)
    console.print(f"results in {args.out}")
    return 0


def cmd_overrefusal(args: argparse.Namespace) -> int:
    """Refusal rate on benign prompts that look unsafe."""
    from evaluation.safety import evaluate_overrefusal, questions_sha256

    (data,) = _data_sets(args)
    _prompt_format(args)
    label = _label(args)
    _preflight(args, label, "overrefusal", [(data.name, questions_sha256(data.questions))])
    with target_endpoint(args, label) as (endpoint, model, serving):
        result = evaluate_overrefusal(
            data.questions, dataset=data.name, endpoint=endpoint, out_dir=args.out, label=label,
            model=model, adapter=str(args.adapter) if args.adapter else None, limit=args.limit,
            max_tokens=args.max_tokens, prompt_format=args.prompt_format,
            max_concurrency=args.max_concurrency, serving=serving, data=data.data)
    rows = [("prompts", str(result["n"])), ("refusal rate", _pct(result["refusal_rate"]))]
    if result["categories"]:
        rows += [(f"  refused: {cat}", f"{_pct(v['refusal_rate'])} of {v['n']}")
                 for cat, v in result["per_category"].items()]
    _print_result(f"over-refusal {data.name} ({label})", rows)
    console.print(f"results in {args.out}")
    return 0


def cmd_utility(args: argparse.Namespace) -> int:
    """MMLU accuracy."""
    from evaluation.data import load_mmlu
    from evaluation.results import UtilityFormat
    from evaluation.utility import evaluate_utility, items_sha256

    items = load_mmlu(args.mmlu)
    label = _label(args)
    _prompt_format(args)
    fmt: UtilityFormat = "plain" if args.prompt_format == "plain" else "raw"
    if args.backend == "endpoint":  # the transformers backend starts no server to wait for
        _preflight(args, label, "utility", [(args.name, items_sha256(items))])
    adapter = str(args.adapter) if args.adapter else None
    if args.backend == "transformers":
        from tools.default_model import resolve_model

        if args.base_url or args.adapter_name:
            raise ValueError("--backend transformers runs the model here: drop --base-url and "
                             "--adapter-name")
        result = evaluate_utility(items, backend="transformers", method=args.method, label=label,
                                  model=resolve_model(args.model), adapter=adapter,
                                  out_dir=args.out, limit=args.limit, dataset=args.name,
                                  max_tokens=args.max_tokens, prompt_format=fmt,
                                  serving={"server": "transformers (in process)"})
    else:
        with target_endpoint(args, label) as (endpoint, model, serving):
            result = evaluate_utility(items, backend="endpoint", method=args.method, label=label,
                                      model=model, adapter=adapter, endpoint=endpoint,
                                      out_dir=args.out, limit=args.limit,
                                      max_concurrency=args.max_concurrency, dataset=args.name,
                                      max_tokens=args.max_tokens, prompt_format=fmt,
                                      serving=serving)
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
def target_endpoint(
    args: argparse.Namespace, label: str
) -> Iterator[tuple[Endpoint, str, dict[str, str]]]:
    """The endpoint of the model under evaluation, starting the embedded server if needed.

    Yields the endpoint, the base model's name and how the model is served (recorded in
    results). With ``--adapter``, the embedded server serves the LoRA adapter under
    ``--adapter-name`` or the label; a ``--base-url`` server must already serve it under
    ``--adapter-name`` (checked at its ``/v1/models``): without that name the request would
    go to the base model, so it is refused.
    """
    from evaluation.identity import adapter_identity, served_base

    if args.adapter_name and not args.adapter:
        raise ValueError("--adapter-name needs --adapter (the adapter's folder: its content "
                         "identifies the model in the caches)")
    if args.adapter:
        adapter_identity(args.adapter)  # a wrong folder fails before a server starts
    if args.base_url:
        model = args.model or "default"
        if args.adapter and not args.adapter_name:
            raise ValueError("--adapter with --base-url: give --adapter-name, the name the "
                             "server serves the adapter under (vLLM: --lora-modules NAME=PATH); "
                             "without it the base model would answer")
        endpoint = Endpoint(args.base_url, args.adapter_name or model, args.api_key_env)
        base = served_base(endpoint, model, args.adapter_name if args.adapter else None)
        yield endpoint, base, {"server": args.base_url, "served_name": endpoint.model,
                               "base_served_name": model}
        return
    from tools.adapter_serving import plan_serving
    from tools.server import EmbeddedServer, served_name

    name = args.adapter_name or label
    plan = (plan_serving(args.model, {name: args.adapter}, how=args.adapter_serving,
                         log=console.print) if args.adapter else {})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    serving: dict[str, Any] = {"server": "embedded vLLM", "served_name": name}
    if name in plan and plan[name].served_as == "merged":
        merged = plan[name]
        serving.update(merged.record())
        server = EmbeddedServer(str(merged.model), served_model_name=name,
                                log_path=out / f"vllm-{label}.log")
        with server:
            yield (Endpoint(server.base_url, name, args.api_key_env), served_name(args.model),
                   serving)
        return
    lora: dict[str, Any] | None = {name: str(args.adapter)} if args.adapter else None
    if name in plan:
        serving.update(plan[name].record())
    with EmbeddedServer(args.model, log_path=out / f"vllm-{label}.log",
                        lora_modules=lora) as server:
        served = name if args.adapter else server.model_name
        serving["served_name"] = served
        yield (Endpoint(server.base_url, served, args.api_key_env), server.model_name, serving)
