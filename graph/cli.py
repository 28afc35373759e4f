"""The generation commands of ``data-advisor``: run, resume, status, history, export, serve.

:func:`add_commands` registers them on the ``data-advisor`` parser (built, with the other
packages' commands and the error handling, in :mod:`experiment.cli`, the top layer). Each
``cmd_*`` function runs one command on a parsed namespace and returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from graph.context import (
    JUDGE_KINDS,
    ROLES,
    SUMMARY_UPDATES,
    Context,
    env_var,
    field_default,
    is_variable_name,
)
from graph.coverage import JUDGE_COLUMNS, judge_cells, judge_rounds, judge_status
from graph.export import FORMATS, export_run, push_to_hub, run_settings
from graph.graph import METHODS
from graph.runner import (
    WAIT_FIELDS,
    Run,
    check_not_studio,
    create_run,
    execute,
    run_lock,
)
from tools.helpformat import (
    Subcommands,
    add_command,
    non_negative_int,
    positive_int,
    positive_seconds,
)
from tools.store import RunStore

console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method", choices=METHODS, default="data_advisor",
        help="data_advisor (advised by a weakness critic) or the self_instruct baseline",
    )
    p.add_argument("--run", type=Path, help="run folder (default: runs/<method>-<time>)")
    # Context options default to None: only those given reach the Context, which fills the
    # others from DATA_ADVISOR_* variables, then its defaults (explicit > environment > default).
    p.add_argument(
        "--rounds", type=positive_int,
        help="number of rounds" + _or_env("rounds", "; no bound with --target-size alone"),
    )
    p.add_argument(
        "--target-size", type=positive_int,
        help="stop once this many prompts are kept (default: no target, or "
        f"${env_var('target_size')})",
    )
    p.add_argument(
        "-k", "--prompts-per-round", type=positive_int,
        help="prompts asked for per round (K)" + _or_env("prompts_per_round"),
    )
    p.add_argument(
        "-w", "--weaknesses-per-round", type=positive_int,
        help="weaknesses the critic names per round (W), each with K prompts generated side "
        "by side: W x K prompts a round; 1 is the paper's loop, 3 or more keeps a server busy "
        "(Self-Instruct gets the same W x K)" + _or_env("weaknesses_per_round"),
    )
    p.add_argument(
        "--examples", type=positive_int,
        help="in-context examples per request" + _or_env("examples_per_request"),
    )
    p.add_argument("--seed", type=int, help="seed of the example sampling" + _or_env("seed"))
    p.add_argument(
        "--principles",
        help="guiding principles of the weakness critic (default: diversity and coverage of "
        "harm categories)",
    )
    p.add_argument(
        "--no-rule-check", action="store_true",
        help="switch the deterministic check of the summary update off (default: on)",
    )
    p.add_argument(
        "--overlap-responses", action="store_true", default=None,
        help="answer each round's prompts in the background while the next rounds run "
        "(same data; keeps the server busy during the critic's and summarizer's calls) "
        "(default: off, each round answered before the next, as in the paper; or "
        "$DATA_ADVISOR_OVERLAP_RESPONSES)",
    )
    p.add_argument(
        "--summary-update", choices=SUMMARY_UPDATES,
        help="how the summarizer updates the summary: 'rewrite' writes it whole (the paper), "
        "'delta' writes only the changed lines, merged by the rule check (a short call a "
        "round; needs the rule check) (default: rewrite, or $DATA_ADVISOR_SUMMARY_UPDATE)",
    )
    p.add_argument(
        "--prompts", type=Path,
        help="folder of <node>.txt templates overriding the shipped ones by name "
        "(default: graph/templates/ only)",
    )
    p.add_argument(
        "--seed-prompts", type=Path,
        help="file of seed prompts, one per line (default: graph/seeds/seed_prompts.txt)",
    )
    p.add_argument(
        "--seed-categories", type=Path,
        help="file of seed categories, one per line (default: graph/seeds/seed_categories.txt)",
    )
    p.add_argument(
        "--decontaminate", type=Path, nargs="+", metavar="FILE",
        help="evaluation set files (CatQA .json, BeaverTails .csv, MMLU .jsonl, one prompt a "
        "line .txt, ...): a generated prompt equal to one of their prompts, or sharing a word "
        f"{field_default('decontaminate_ngram')}-gram with them, is rejected as contaminated "
        f"(default: none, or ${env_var('decontaminate')}, paths separated by ':'; the "
        f"n-gram size and containment threshold: ${env_var('decontaminate_ngram')}, "
        f"${env_var('decontaminate_threshold')})",
    )
    p.add_argument(
        "--steer-from", type=Path, nargs="+", metavar="RESULT",
        help="safety results of a model trained on such data (results/safety-<set>-<label>"
        ".json, with their caches beside them): the categories where it is most harmful, with "
        "a few questions it failed on, are given to the weakness critic ({failures} in its "
        "template); Self-Instruct adds the failed questions to its pool instead (default: "
        f"none, or ${env_var('steer_from')}; how many categories and examples: "
        f"${env_var('steer_categories')}, ${env_var('steer_examples')})",
    )
    p.add_argument(
        "--judge", choices=JUDGE_KINDS,
        help="prompt judge run on each round's candidates after the lexical filters: a prompt "
        "judged not harmful is rejected as not_harmful, a kept one stores its taxonomy "
        "category, and the critic sees the coverage (llamaguard3: Llama Guard 3 at "
        "--judge-url/--judge-model; llm: any chat model with the prompt_judge template)"
        + _or_env("judge", "; default: no judge"),
    )
    p.add_argument(
        "--taxonomy", type=Path, metavar="FILE",
        help="harm taxonomy for the judge and coverage, one 'CODE: Name' or name a line "
        "(default: Llama Guard 3's S1-S14, or $" + env_var("taxonomy") + ")",
    )
    _add_endpoint_options(p, resume=False)
    p.add_argument(
        "--max-concurrency", type=positive_int,
        help="concurrent requests per node at most" + _or_env("max_concurrency"),
    )
    _add_wait_options(p, resume=False)
    _add_progress_option(p)


def _add_wait_options(p: argparse.ArgumentParser, *, resume: bool) -> None:
    """``--request-timeout``, ``--max-retries`` and ``--node-timeout``."""

    def default(name: str) -> str:
        return " (default: as recorded in run.json)" if resume else _or_env(name)

    p.add_argument(
        "--request-timeout", type=positive_seconds,
        help="seconds one try of a request may take" + default("request_timeout"),
    )
    p.add_argument(
        "--max-retries", type=non_negative_int,
        help="tries after the first of a request, on connection errors, timeouts, 429, 5xx and "
        "malformed answers (with backoff)" + default("max_retries"),
    )
    p.add_argument(
        "--node-timeout", type=positive_seconds,
        help="seconds one request may take in all, retries included: how long a node waits for "
        "a hung server before the run stops" + default("node_timeout"),
    )


def _add_endpoint_options(p: argparse.ArgumentParser, *, resume: bool) -> None:
    """``--base-url``, ``--model``, the per-role overrides and ``--api-key-env``; on resume
    each one changes where the run's servers are (default: as recorded in run.json)."""
    keep = " (default: as recorded in run.json)"
    if resume:
        p.add_argument(
            "--base-url",
            help="new OpenAI-compatible base URL for every role without a URL of its own; "
            "a run on the embedded server switches to it" + keep,
        )
        p.add_argument(
            "--model",
            help="new served model name for every role without one of its own (a run on the "
            "embedded server needs --base-url with it)" + keep,
        )
    else:
        p.add_argument(
            "--base-url",
            help="OpenAI-compatible base URL, e.g. http://host:8000/v1 (default: start the "
            "embedded vLLM server)",
        )
        p.add_argument(
            "--model",
            help="model: served name with --base-url, else HF id or path for the embedded "
            "server (default: SmolLM2-135M-Instruct)",
        )
    for role in ROLES:
        p.add_argument(
            f"--{role}-url",
            help=f"{'new ' if resume else ''}base URL of the {role}"
            + (keep if resume else " (default: --base-url)"),
        )
        p.add_argument(
            f"--{role}-model",
            help=f"{'new ' if resume else ''}served model name of the {role}"
            + (keep if resume else " (default: --model)"),
        )
    p.add_argument(
        "--api-key-env", type=_variable_name, metavar="NAME",
        help="name of the environment variable holding the API key (the key itself is never "
        "written anywhere)" + (keep if resume else _or_env("api_key_env")),
    )


def _add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress", action="store_true",
        help="no progress (default: a bar on a terminal, else one line per round, and a status "
        "line while the embedded vLLM server starts)",
    )


def _or_env(name: str, more: str = "") -> str:
    """`` (default: X, or $DATA_ADVISOR_<NAME>)``: the end of a context option's help."""
    return f" (default: {field_default(name)}, or ${env_var(name)}{more})"


def _variable_name(text: str) -> str:
    """An argparse type: the name of an environment variable (never echoes a key given)."""
    if not is_variable_name(text):
        raise argparse.ArgumentTypeError(
            "takes the NAME of an environment variable, not the key (letters, digits and _; "
            "e.g. export MY_KEY=... then --api-key-env MY_KEY)"
        )
    return text


def _context(args: argparse.Namespace) -> Context:
    """The run's context from the options given; the Context fills the others (and checks
    every field, before anything is created)."""
    values: dict[str, Any] = {
        "rounds": args.rounds,
        "target_size": args.target_size,
        "prompts_per_round": args.prompts_per_round,
        "weaknesses_per_round": args.weaknesses_per_round,
        "examples_per_request": args.examples,
        "seed": args.seed,
        "rule_check": False if args.no_rule_check else None,
        "overlap_responses": args.overlap_responses,
        "summary_update": args.summary_update,
        "prompts_dir": str(args.prompts) if args.prompts else None,
        "seed_prompts_file": str(args.seed_prompts) if args.seed_prompts else None,
        "seed_categories_file": str(args.seed_categories) if args.seed_categories else None,
        "decontaminate": [str(path) for path in args.decontaminate] if args.decontaminate
        else None,
        "steer_from": [str(path) for path in args.steer_from] if args.steer_from else None,
        "judge": args.judge,
        "taxonomy": str(args.taxonomy) if args.taxonomy else None,
        "api_key_env": args.api_key_env,
        "max_concurrency": args.max_concurrency,
        "request_timeout": args.request_timeout,
        "max_retries": args.max_retries,
        "node_timeout": args.node_timeout,
    }
    values["principles"] = args.principles
    values["base_url"] = args.base_url
    values["model"] = args.model if args.base_url else None  # else the embedded server's
    for role in ROLES:
        values[f"{role}_base_url"] = getattr(args, f"{role}_url")
        values[f"{role}_model"] = getattr(args, f"{role}_model")
    if args.rounds is None and args.target_size is not None and env_var("rounds") not in os.environ:
        values["rounds"] = 1_000_000  # --target-size alone: no bound on the rounds
    return Context(**{name: value for name, value in values.items() if value is not None})


def cmd_run(args: argparse.Namespace) -> int:
    """Start a new run."""
    folder = args.run or Path("runs") / f"{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.run = folder  # for the hint after an endpoint error
    embedded = not args.base_url
    run = create_run(
        folder,
        args.method,
        _context(args),
        embedded=embedded,
        embedded_model=args.model if embedded else None,
    )
    err.print(f"run folder: {run.folder}")
    if warning := run.context.missing_key_warning(embedded=embedded):
        err.print(warning, highlight=False, markup=False)
    return _execute(run, resume=False, progress=not args.no_progress)


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a run from its last checkpoint, at new endpoints if asked."""
    run = Run.load(args.run)
    check_not_studio(run)
    with run_lock(run):  # no endpoint is changed under a process executing the run
        for entry in run.change_endpoints(_endpoint_changes(args)):
            err.print(
                f"{entry['field']}: {entry['old']} -> {entry['new']} "
                f"(recorded in {run.folder / 'run.json'})",
                highlight=False,
            )
        if warning := run.context.missing_key_warning(embedded=run.embedded):
            err.print(warning, highlight=False, markup=False)
        return _execute(run, resume=True, progress=not args.no_progress)


def _endpoint_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The context fields the endpoint and wait options of ``resume`` set."""
    options = {"base_url": args.base_url, "model": args.model, "api_key_env": args.api_key_env}
    for role in ROLES:
        options[f"{role}_base_url"] = getattr(args, f"{role}_url")
        options[f"{role}_model"] = getattr(args, f"{role}_model")
    options.update({name: getattr(args, name) for name in WAIT_FIELDS})
    return {name: value for name, value in options.items() if value is not None}


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
    _show_samples(run)
    return 0


def _show_samples(run: Run, rows: int = 3) -> None:
    """A few kept rows (one from each of the last rounds) and the commands to go on with."""
    with RunStore(run.db_path, run.run_id) as store:
        by_round: dict[int, dict[str, Any]] = {}
        for sample in store.samples(with_response=True):
            by_round.setdefault(sample["round"], sample)  # the round's first kept prompt
    picked = [by_round[r] for r in sorted(by_round)[-rows:]]
    width = max(min(console.width, 110) - 12, 20)  # a glance, not the data: see export
    if picked:
        console.print(f"[bold]a few kept rows[/] of {run.name}:", highlight=False)
    for sample in picked:
        console.print(
            f"round {sample['round']} | {sample.get('weakness') or 'no weakness (self_instruct)'}",
            highlight=False, soft_wrap=True, markup=False,
        )
        for label in ("prompt", "response"):
            text = Text(" ".join(sample[label].split()))  # one line, cut to the width
            text.truncate(width, overflow="ellipsis")
            console.print(Text.assemble(f"  {label + ':':<10}", text), highlight=False)
    console.print(
        f"next: data-advisor history {run.folder}  |  data-advisor export {run.folder}  |  "
        f"data-advisor eval diversity {run.folder}",
        highlight=False,
        soft_wrap=True,
    )


def cmd_status(args: argparse.Namespace) -> int:
    """Print where a run stands (``graph.runner.run_phase``: what ``resume`` would do)."""
    from graph.runner import lock_holder, run_phase
    from graph.state import record_unfinished

    run = Run.load(args.run)
    with RunStore(run.db_path, run.run_id) as store:
        counts = store.counts()
        rounds = store.rounds()
        judging = judge_status(store, run.context)
        next_nodes: tuple[str, ...]
        if run.is_studio:  # the LangGraph server has the checkpoints: the store tells the rest
            values, next_nodes, at = _studio_values(rounds), (), None
            state = "Studio thread (checkpoints kept by the LangGraph server)"
        else:
            phase = run_phase(run, store)
            values = {"summary": phase.state.summary, "rejected": phase.state.rejected}
            next_nodes, at, state = phase.next, phase.round, phase.name
    info = {
        "run": str(run.folder),
        "id": run.run_id,
        "method": run.method,
        "state": state,
        "executed_by": lock_holder(run.folder),
        "next": list(next_nodes),
        "round": at,
        "rounds_done": sum(1 for r in rounds if not record_unfinished(r, run.context)),
        "rounds_planned": run.context.rounds,
        "target_size": run.context.target_size,
        **counts,
        "rejected_by_reason": values.get("rejected", {}),
        "decontaminated_against": run.context.decontaminate,
        **judging,
        "summary": values.get("summary", []),
        "generator": run.context.endpoint("generator").model,
        "embedded_server": run.embedded,
    }
    if args.json:
        console.print_json(json.dumps(info))
        return 0
    table = Table(show_header=False, box=None)
    for key, value in info.items():
        shown = "; ".join(value) if key in ("summary", "decontaminated_against") else value
        if key == "prompts_per_category":
            shown = ", ".join(f"{name} {n}" for name, n in value.items())
        table.add_row(f"[bold]{key}[/]", str(shown))
    console.print(table)
    return 0


def _studio_values(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """What status shows of a Studio thread, from its store: the last round's summary and the
    rejections of all rounds."""
    summaries = [r["summary_after"] for r in rounds if r.get("summary_after") is not None]
    rejected: dict[str, int] = {}
    for r in rounds:
        for reason, n in (r.get("rejected") or {}).items():
            rejected[reason] = rejected.get(reason, 0) + n
    return {"summary": summaries[-1] if summaries else [], "rejected": rejected}


def cmd_history(args: argparse.Namespace) -> int:
    """Print one line per round; a round is in progress until every node its record names
    has finished (``graph.state.record_unfinished``, as for ``status`` and ``resume``)."""
    from graph.state import record_unfinished

    run = Run.load(args.run)
    with RunStore(run.db_path, run.run_id) as store:
        rounds = [{**r, "complete": not record_unfinished(r, run.context)}
                  for r in store.rounds()]
        judged = judge_rounds(store, run.context)
    if judged:
        rounds = [{**r, **judged.get(r["round"], {})} for r in rounds]
    if args.json:
        console.print_json(json.dumps(rounds))
        return 0
    table = Table(title=f"{run.method} {run.name}")
    for col in (
        "round",
        "weaknesses",
        "novel",
        "summary change",
        "rule check",
        "kept",
        "rejected",
        "answered",
        "seconds",
        "tok/s",
        *JUDGE_COLUMNS * bool(judged),
    ):
        table.add_column(col)
    for r in rounds:
        before, after = r.get("summary_before") or [], r.get("summary_after") or []
        added = [line for line in after if line not in before]
        lost = [line for line in before if line not in after]
        change = ", ".join([*(f"+{a}" for a in added), *(f"-{x}" for x in lost)]) or "="
        if run.method != "data_advisor":
            change = "-"
        if not r["complete"]:
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
            "; ".join(r.get("weaknesses") or []) or "-",
            "; ".join("yes" if novel else "no" for novel in r.get("weaknesses_novel") or [])
            or "-",
            change,
            verdict,
            str(r.get("kept") or 0),
            str(sum((r.get("rejected") or {}).values())),
            str(r.get("responses") or 0),
            f"{seconds:.1f}",
            f"{tokens / seconds:.1f}" if seconds else "-",
            *(judge_cells(r) if judged else ()),
        )
    console.print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a run's data."""
    run = Run.load(args.run)
    formats = tuple(args.format or FORMATS)
    with RunStore(run.db_path, run.run_id) as store:
        paths = export_run(
            store, args.out or run.folder / "export", formats, run_settings(run),
            license=args.license,
        )
        counts = store.counts()
    for fmt, path in paths.items():
        console.print(f"{fmt}: {path}")
    console.print(f"{counts['responses']} rows ({counts['prompts'] - counts['responses']} "
                  "prompts without a response left out)")
    if args.push_to_hub:
        url = push_to_hub(paths, args.push_to_hub, private=not args.public)
        visibility = "public" if args.public else "private"
        console.print(f"pushed to the Hub ({visibility} dataset {args.push_to_hub}): {url}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the embedded vLLM server and wait until Ctrl-C, SIGTERM or SIGHUP.

    The ``with`` block turns SIGTERM and SIGHUP into KeyboardInterrupt (also during the start),
    so a ``kill`` of this process stops vLLM's whole process group before it exits.
    """
    from tools.server import EmbeddedServer

    log = args.log or Path("runs") / "serve-vllm.log"
    server = EmbeddedServer(
        args.model, log_path=log, port=args.port, max_model_len=args.max_model_len
    )
    try:
        with server:
            console.print(
                f"serving {server.model_name} at {server.base_url} (log: {log}); "
                f"Ctrl-C or `kill {os.getpid()}` stops it",
                highlight=False,
            )
            console.print(
                f"export DATA_ADVISOR_BASE_URL={server.base_url} "
                f"DATA_ADVISOR_MODEL={server.model_name}",
                highlight=False,
                soft_wrap=True,
            )
            sys.stdout.flush()  # a background `serve > file &` shows the URL at once
            while server.running:
                time.sleep(1)
            err.print(f"[red]error:[/] the vLLM server exited; see {log}")
            return 1
    except KeyboardInterrupt:
        err.print("stopped the vLLM server")
        return 0


def add_commands(sub: Subcommands) -> None:
    """Register the generation commands (run, resume, status, history, export, serve)."""
    run = add_command(
        sub, "run", "generate data with Data Advisor or Self-Instruct",
        description="Start a new run: generate harmful prompts with safe responses, round by "
        "round, into a run folder\n(run.json, run.sqlite, checkpoints.sqlite, vllm.log).",
        examples=[
            "data-advisor run --rounds 20 -k 10 --run runs/da1         # embedded vLLM + SmolLM2",
            "data-advisor run --method self_instruct --rounds 20 --run runs/si1",
            "data-advisor run --base-url http://gpu-box:8000/v1 --model mistralai/Mistral-7B-"
            "Instruct-v0.2 --target-size 10000 --run runs/big",
        ],
    )
    _add_run_options(run)
    run.set_defaults(func=cmd_run)
    resume = add_command(
        sub, "resume", "continue a stopped or crashed run, at new endpoints if asked",
        description="Continue a run from its last checkpoint (after Ctrl-C, kill, a crash or a "
        "dead endpoint).\nThe endpoint options point it at servers that moved; each change is "
        "recorded in the\n`history` of run.json. Nothing else about a run can change.",
        examples=[
            "data-advisor resume runs/da1",
            "data-advisor resume runs/big --base-url http://new-box:8000/v1",
            "data-advisor resume runs/big --responder-url http://guard:8001/v1 "
            "--responder-model my-responder",
        ],
    )
    resume.add_argument("run", type=Path, help="the run folder")
    _add_endpoint_options(resume, resume=True)
    _add_wait_options(resume, resume=True)
    _add_progress_option(resume)
    resume.set_defaults(func=cmd_resume)
    for name, func, text in (
        ("status", cmd_status, "where a run stands: next node, counts, summary"),
        ("history", cmd_history, "one line per round: weakness, summary change, counts, time"),
    ):
        sp = add_command(sub, name, text, examples=[f"data-advisor {name} runs/da1 --json"])
        sp.add_argument("run", type=Path, help="the run folder")
        sp.add_argument("--json", action="store_true", help="JSON instead of a table")
        sp.set_defaults(func=func)
    export = add_command(
        sub, "export", "write JSONL, Parquet and a HF datasets folder",
        examples=["data-advisor export runs/da1 --format jsonl --out data/da1"],
    )
    export.add_argument("run", type=Path, help="the run folder")
    export.add_argument("--out", type=Path, help="output folder (default: RUN/export)")
    export.add_argument(
        "--format", action="append", choices=FORMATS,
        help="a format to write, may be repeated (default: all)",
    )
    export.add_argument("--license", help="license id for the dataset card (e.g. cc-by-4.0)")
    export.add_argument(
        "--push-to-hub", metavar="REPO",
        help="upload the card and the data files to this Hub dataset (token: HF_TOKEN or login)",
    )
    export.add_argument(
        "--public", action="store_true",
        help="with --push-to-hub: make a new dataset public (default: private)",
    )
    export.set_defaults(func=cmd_export)
    serve = add_command(
        sub, "serve", "start the embedded vLLM server and print its URL",
        description="Start the embedded vLLM server (an OpenAI-compatible endpoint on "
        "loopback) and wait;\nCtrl-C, kill (SIGTERM) or a closed terminal (SIGHUP) stops it.",
        examples=[
            "data-advisor serve --port 8000 &     # prints DATA_ADVISOR_BASE_URL=...",
            "kill %1                              # stops vLLM too",
        ],
    )
    serve.add_argument("--model", help="HF id or path (default: SmolLM2-135M-Instruct)")
    serve.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    serve.add_argument("--max-model-len", type=int, default=4096, help="context length")
    serve.add_argument("--log", type=Path, help="vLLM's log file (default: runs/serve-vllm.log)")
    serve.set_defaults(func=cmd_serve)
