"""The experiment's five stages and :func:`run_experiment`, which runs them into one folder.

:func:`run_experiment` takes a config (:mod:`experiment.config`) and runs, in ``out_dir``:

1. **generation**: a Data Advisor and a Self-Instruct run with the same budget (target size,
   round bound, K) in ``<out>/runs/<method>``, either against the endpoints the config names
   (``base_url`` / ``<role>_url``) or against ONE embedded vLLM server started for both runs;
2. **training**: one LoRA adapter per data set on the same target model, each trained on its
   data set mixed with the same instruction data (:func:`training.launch.train_adapter`), in
   ``<out>/adapters/<method>`` (the adapter itself in ``<out>/adapters/<method>/adapter``);
3. **evaluation**: safety on CatQA and BeaverTails (judged by the refusal-string judge or Llama
   Guard), over-refusal (optional) and MMLU utility for the base model and both adapters, all
   served by ONE embedded vLLM server (``lora_modules``), or by an existing server that serves
   them under names the config gives (``[evaluation] base_url``); results in ``<out>/results``;
4. **diversity** of both data sets (and of reference files such as CatQA) in ``<out>/results``;
5. **report**: ``<out>/report/report.md`` and its plots (:func:`evaluation.report.build_report`).

Generation (a prompt rejected as ``contaminated``) and training (examples dropped and counted)
are decontaminated against the config's ``decontaminate`` files, by default the prompts of the
``[evaluation]`` sets, written to ``<out>/decontamination.jsonl`` (``tools.decontam``).

Every stage is skipped when its output exists, so running the same config again after a crash
or Ctrl-C continues where it stopped; within a stage, a generation run resumes from its last
checkpoint, training from its last Trainer checkpoint, and an evaluation from the responses and
judgments already on disk. Changing the config of a stage that is done does not redo it:
delete the stage's output (or use another ``out_dir``) for that.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from evaluation.results import PromptFormat, ResultKind, read_results, result_filename
from experiment.config import (
    ConfigError,
    ExperimentConfig,
    GenerationConfig,
    load_config,
)
from graph.context import ROLES
from tools.default_model import is_default_model
from tools.files import write_atomic, write_json
from tools.llm import Endpoint

STAGES = ("generation", "training", "evaluation", "diversity", "report")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``--max-lora-rank`` values vLLM accepts."""




@dataclass
class ExperimentResult:
    """Where an experiment's outputs are and what each stage did (``ran`` / ``skipped``)."""

    out_dir: Path
    runs: dict[str, Path]
    adapters: dict[str, Path]
    results_dir: Path
    report: Path
    stages: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _lora_rank(rank: int) -> int:
    return next((r for r in LORA_RANKS if r >= rank), rank)


@dataclass
class _Roles:
    """Endpoints of the generation roles: context values, and the embedded model if any."""

    values: dict[str, Any]
    embedded: bool
    embedded_model: str | None


def _generation_roles(gen: GenerationConfig) -> _Roles:
    from tools.default_model import DEFAULT_MODEL_NAME

    values: dict[str, Any] = {}
    embedded_roles: dict[str, str | None] = {}
    for role in ROLES:
        url = getattr(gen, f"{role}_url") or gen.base_url
        model = getattr(gen, f"{role}_model") or gen.model
        if url is None:
            embedded_roles[role] = None if is_default_model(model) else model
            values[f"{role}_base_url"] = values[f"{role}_model"] = None
        else:
            values[f"{role}_base_url"] = url
            values[f"{role}_model"] = model or DEFAULT_MODEL_NAME
    models = set(embedded_roles.values())
    if len(models) > 1:
        raise ConfigError(
            "[generation]: roles without a URL name different models "
            f"({ {r: m or DEFAULT_MODEL_NAME for r, m in embedded_roles.items()} }); the "
            "experiment embeds one vLLM server: give base_url or <role>_url for the others"
        )
    if not embedded_roles:
        values["base_url"] = values["generator_base_url"]
        values["model"] = values["generator_model"]
        return _Roles(values, False, None)
    return _Roles(values, True, next(iter(models)))


def _run_status(folder: Path) -> str:
    """``new`` (no run folder yet: create it), ``finished`` (skip it) or ``partial`` (resume
    it, also when not started): ``graph.runner.run_phase``, as ``status`` and ``resume`` see it."""
    from graph.runner import Run, run_phase
    from tools.store import RUN_FILE

    if not (folder / RUN_FILE).is_file():
        return "new"
    return "finished" if run_phase(Run.load(folder)).name == "finished" else "partial"


class _Experiment:
    """One call of :func:`run_experiment`."""

    def __init__(self, cfg: ExperimentConfig, out: Path, progress: bool) -> None:
        self.cfg, self.out, self.progress = cfg, out, progress
        self.console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
        self.runs = {m: out / "runs" / m for m in cfg.methods}
        self.adapters = {m: out / "adapters" / m for m in cfg.methods}
        self.results = out / "results"
        self.report_dir = out / "report"
        self.logs = out / "logs"

    def say(self, text: str) -> None:
        self.console.print(text)

    @cached_property
    def decontamination(self) -> list[str]:
        """The files generation and training are decontaminated against: the config's
        ``decontaminate``, else the prompts of the ``[evaluation]`` sets (read with the
        evaluation loaders, whole, without the limits) in ``<out>/decontamination.jsonl``,
        rewritten with the same bytes while the sets are the same (a run records its hash)."""
        if self.cfg.decontaminate is not None:
            return list(self.cfg.decontaminate)
        from evaluation.data import load_beavertails, load_catqa, load_mmlu, load_questions

        ev = self.cfg.evaluation
        prompts: list[str] = []
        for source, loader in ((ev.catqa, load_catqa), (ev.beavertails, load_beavertails),
                               (ev.overrefusal, load_questions)):
            if source:
                prompts += [q.prompt for q in loader(source)]
        if ev.mmlu:
            prompts += [q.prompt for q in load_mmlu(ev.mmlu)]
        path = self.out / "decontamination.jsonl"
        write_atomic(path, "".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n"
                                   for p in prompts))
        self.say(f"  decontamination: {len(prompts)} evaluation prompts in {path}")
        return [str(path)]

    # -- 1. generation ------------------------------------------------------------------------

    def generation(self) -> bool:
        from graph.context import Context
        from graph.runner import Run, RunError, create_run, execute

        gen = self.cfg.generation
        status = {m: _run_status(folder) for m, folder in self.runs.items()}
        for m in self.cfg.methods:
            if status[m] == "finished":
                self.say(f"  {m}: finished run in {self.runs[m]} [dim](skipped)[/]")
        todo = [m for m in self.cfg.methods if status[m] != "finished"]
        if not todo:
            return False
        roles = _generation_roles(gen)
        server_cm: Any = nullcontext(None)
        if roles.embedded:
            from tools.server import EmbeddedServer

            server_cm = EmbeddedServer(
                roles.embedded_model, log_path=self.logs / "vllm-generation.log",
                max_model_len=gen.max_model_len, extra_args=gen.server_args)
            self.say(f"  starting the embedded vLLM server for generation "
                     f"({server_cm.model_name}; log {server_cm.log_path}) ...")
        with server_cm as server:
            endpoints = dict(roles.values)
            if server is not None:
                endpoints["base_url"], endpoints["model"] = server.base_url, server.model_name
                self.say(f"  serving at {server.base_url} "
                         f"(up in {server.startup_seconds or 0:.0f} s)")
            rounds = gen.rounds if gen.rounds is not None else (
                1_000_000 if gen.target_size else 10)
            base = {
                **gen.context,
                "rounds": rounds,
                "target_size": gen.target_size,
                "prompts_per_round": gen.prompts_per_round,
                "weaknesses_per_round": gen.weaknesses_per_round,
                "examples_per_request": gen.examples_per_request,
                "seed": self.cfg.seed,
                "api_key_env": gen.api_key_env,
                "max_concurrency": gen.max_concurrency,
                "seed_prompts_file": gen.seed_prompts_file,
                "seed_categories_file": gen.seed_categories_file,
                "decontaminate": self.decontamination,
                **endpoints,
            }
            for m in todo:
                folder = self.runs[m]
                if status[m] == "new":
                    self.say(f"  {m}: new run in {folder}")
                    run = create_run(folder, m, Context(**base), embedded=roles.embedded,  # type: ignore[arg-type]
                                     embedded_model=roles.embedded_model)
                    resume = False
                else:
                    run = Run.load(folder)
                    if run.method != m:
                        raise RunError(f"{folder} holds a {run.method} run, not {m}")
                    self.say(f"  {m}: resuming the run in {folder}")
                    resume = True
                # the run.json keeps "embedded" for a later `data-advisor resume`; here the
                # shared server (or the config's endpoints) serves it
                ctx = Context(**{**run.context.to_dict(), **endpoints})
                state = execute(replace(run, context=ctx, embedded=False), resume=resume,
                                show_progress=self.progress)
                self.say(f"  {m}: {state.kept} prompts kept, {state.responses} answered, "
                         f"{sum(state.rejected.values())} rejected")
        return True

    # -- 2. training --------------------------------------------------------------------------

    def training(self) -> bool:
        from training.lora import adapter_done

        tr = self.cfg.training
        todo = [m for m in self.cfg.methods if not adapter_done(self.adapters[m])]
        for m in self.cfg.methods:
            if m not in todo:
                self.say(f"  {m}: adapter in {self.adapters[m] / 'adapter'} [dim](skipped)[/]")
        if not todo:
            return False
        from training.launch import train_adapter
        from training.mix import load_instructions

        instructions = load_instructions(tr.instructions)
        for m in todo:
            self.say(f"  {m}: training on {self.runs[m]} + {tr.instructions} -> "
                     f"{self.adapters[m]}")
            result, splits = train_adapter(
                self.runs[m], instructions, self.adapters[m], model=tr.model,
                config=tr.train_config(self.cfg.seed), ratio=tr.ratio, seed=self.cfg.seed,
                val_fraction=tr.val_fraction, instructions_limit=tr.instructions_limit,
                decontaminate=self.decontamination)
            counts = {k: ", ".join(f"{n} {src}" for src, n in sorted(v.items())) or "none"
                      for k, v in splits.counts().items()}
            self.say(f"  {m}: {result.global_step} steps; train {counts['train']}, validation "
                     f"{counts['validation']}; dropped as contaminated "
                     f"{counts['contaminated']}; last train loss {_fmt(result.train_loss)}, "
                     f"validation loss {_fmt(result.eval_loss)}")
        return True

    # -- 3. evaluation ------------------------------------------------------------------------

    def _labels(self) -> list[str]:
        return ["base", *self.cfg.methods]

    def _tasks(self) -> list[tuple[str, ResultKind, str, Path]]:
        """``(label, kind, dataset, result file)`` of every evaluation."""
        ev = self.cfg.evaluation
        wanted: list[tuple[ResultKind, str]] = [
            ("safety", name) for name, source in (("catqa", ev.catqa),
                                                  ("beavertails", ev.beavertails)) if source]
        if ev.overrefusal:
            wanted.append(("overrefusal", ev.overrefusal_name))
        if ev.mmlu:
            wanted.append(("utility", "mmlu"))
        return [(label, kind, dataset, self.results / result_filename(kind, dataset, label))
                for label in self._labels() for kind, dataset in wanted]

    def evaluation(self) -> bool:
        from evaluation.data import load_beavertails, load_catqa, load_mmlu, load_questions
        from evaluation.judges import make_judge
        from evaluation.safety import evaluate_overrefusal, evaluate_safety
        from evaluation.utility import evaluate_utility
        from training.lora import adapter_done

        ev = self.cfg.evaluation
        tasks = self._tasks()
        todo = [t for t in tasks if not t[3].is_file()]
        for label, _, dataset, path in tasks:
            if not path.is_file():
                continue
            self.say(f"  {label} on {dataset}: {path.name} [dim](skipped)[/]")
        if not todo:
            return False
        for m in self.cfg.methods:
            if ev.base_url is None and not adapter_done(self.adapters[m]):
                raise FileNotFoundError(f"no trained adapter in {self.adapters[m]}")
        sources: dict[str, tuple[str | None, Callable[[str], Any]]] = {
            "catqa": (ev.catqa, load_catqa), "beavertails": (ev.beavertails, load_beavertails),
            "mmlu": (ev.mmlu, load_mmlu)}
        data: dict[str, Any] = {}
        for _, kind, dataset, _ in todo:
            if dataset in data:
                continue
            source, loader = (sources[dataset] if kind != "overrefusal"
                              else (ev.overrefusal, load_questions))
            if source is None:  # _tasks has a task only where the config names its data
                raise ConfigError(f"[evaluation]: no data for {dataset}")
            data[dataset] = loader(source)
        judge = None
        if any(kind == "safety" for _, kind, _, _ in todo):
            endpoint = (Endpoint(ev.judge_url, ev.judge_model or "llama-guard",
                                 ev.judge_api_key_env) if ev.judge_url else None)
            options = {"max_concurrency": ev.judge_max_concurrency} if endpoint else {}
            judge = make_judge(ev.judge, endpoint, **options)
        self.results.mkdir(parents=True, exist_ok=True)
        limits = {"catqa": ev.catqa_limit, "beavertails": ev.beavertails_limit,
                  ev.overrefusal_name: ev.overrefusal_limit, "mmlu": ev.mmlu_limit}
        # the config checked both choices; these name them for the type checker
        mmlu_method: Literal["loglik", "generate"] = (
            "generate" if ev.mmlu_method == "generate" else "loglik")
        with self._eval_server() as (base_url, names, model_name, prompt_format):
            for label, kind, dataset, _ in todo:
                endpoint = Endpoint(base_url, names[label], ev.api_key_env)
                adapter = (str(self.adapters[label] / "adapter") if label != "base" else None)
                common: dict[str, Any] = dict(label=label, model=model_name, adapter=adapter,
                                              limit=limits[dataset], progress=self.progress,
                                              serving={"server": ev.base_url or "embedded vLLM",
                                                       "served_name": names[label]})
                started = time.perf_counter()
                if kind == "safety":
                    assert judge is not None  # made above for the safety tasks
                    result = evaluate_safety(
                        data[dataset], dataset=dataset, endpoint=endpoint, judge=judge,
                        out_dir=self.results, max_tokens=ev.max_tokens,
                        prompt_format=prompt_format, max_concurrency=ev.max_concurrency,
                        **common)
                    shown = f"safety score {100 * result['safety_score']:.1f}%"
                elif kind == "overrefusal":
                    result = evaluate_overrefusal(
                        data[dataset], dataset=dataset, endpoint=endpoint,
                        out_dir=self.results, max_tokens=ev.max_tokens,
                        prompt_format=prompt_format, max_concurrency=ev.max_concurrency,
                        **common)
                    shown = f"refusal rate {100 * result['refusal_rate']:.1f}%"
                else:
                    result = evaluate_utility(
                        data[dataset], backend="endpoint", method=mmlu_method,
                        endpoint=endpoint, out_dir=self.results,
                        max_concurrency=ev.max_concurrency, **common)
                    shown = f"accuracy {100 * result['accuracy']:.1f}%"
                self.say(f"  {label} on {dataset}: {shown} (n={result['n']}, "
                         f"{time.perf_counter() - started:.0f} s)")
        return True

    @contextmanager
    def _eval_server(self) -> Iterator[tuple[str, dict[str, str], str, PromptFormat]]:
        """(base URL, served name per label, base model's name, prompt format)."""
        from tools.default_model import DEFAULT_MODEL_NAME

        ev, tr = self.cfg.evaluation, self.cfg.training
        target = None if is_default_model(tr.model) else str(tr.model)
        # auto is chat (through a plain chat template when the target has none, below)
        fmt: PromptFormat = "plain" if ev.prompt_format == "plain" else "chat"
        if ev.base_url is not None:
            base = ev.base_model or target or DEFAULT_MODEL_NAME
            names = {"base": base, **{m: ev.adapter_models.get(m, m) for m in self.cfg.methods}}
            yield ev.base_url, names, base, fmt
            return
        from tools.server import EmbeddedServer

        extra = list(ev.server_args)
        if ev.prompt_format == "auto":
            template = self._plain_chat_template(target)
            if template is not None:
                extra += ["--chat-template", str(template)]
                self.say(f"  the target has no chat template: serving {template.name} "
                         "(the training's plain format)")
        rank = int(tr.train_config(self.cfg.seed).rank)
        server = EmbeddedServer(
            target, log_path=self.logs / "vllm-evaluation.log", max_model_len=ev.max_model_len,
            lora_modules={m: str(self.adapters[m] / "adapter") for m in self.cfg.methods},
            max_lora_rank=_lora_rank(rank), extra_args=extra)
        self.say(f"  starting the embedded vLLM server for evaluation ({server.model_name} + "
                 f"{len(self.cfg.methods)} LoRA adapters; log {server.log_path}) ...")
        with server:
            self.say(f"  serving at {server.base_url} (up in {server.startup_seconds or 0:.0f} s)")
            names = {"base": server.model_name, **{m: m for m in self.cfg.methods}}
            yield server.base_url, names, server.model_name, fmt

    def _plain_chat_template(self, target: str | None) -> Path | None:
        """A chat template file rendering the training's plain format, for a target without
        a chat template of its own (None when it has one)."""
        from transformers import AutoTokenizer

        from tools.default_model import resolve_model
        from training.format import has_chat_template, plain_chat_template

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(target))
        if has_chat_template(tokenizer):
            return None
        path = self.out / "plain_chat_template.jinja"
        path.write_text(plain_chat_template(tokenizer), "utf-8")
        return path

    # -- 4. diversity -------------------------------------------------------------------------

    def diversity(self) -> bool:
        from evaluation.data import load_prompts
        from evaluation.diversity import evaluate_diversity, source_name, write_result

        dv = self.cfg.diversity
        sources: dict[str, str] = {m: str(folder) for m, folder in self.runs.items()}
        for ref in dv.references:
            sources.setdefault(source_name(ref), ref)
        paths = {name: self.results / result_filename("diversity", name) for name in sources}
        if all(p.is_file() for p in paths.values()):
            for p in paths.values():
                self.say(f"  {p.name} [dim](skipped)[/]")
            return False
        loaded = {name: load_prompts(src) for name, src in sources.items()}
        # the generated data sets are compared at an equal size: the smallest of them (capped
        # by the config's size); a smaller reference gets its full curve only
        smallest = min(len(loaded[m]) for m in self.cfg.methods)
        size = min(dv.size, smallest) if dv.size else smallest
        for name, questions in loaded.items():
            at = size if 0 < size <= len(questions) else None
            result = evaluate_diversity(questions, name=name, size=at, seeds=dv.seeds)
            result["source"] = sources[name]
            path = write_result(result, self.results)
            curve = (result["distinct_at_size"] or {}).get("values") or result["distinct"]
            self.say(f"  {name}: {result['n_prompts']} prompts, {result['categories']} "
                     f"categories, distinct-4 {curve['4']:.3f} at "
                     f"{at or len(questions)} prompts -> {path.name}")
        return True

    # -- 5. report ----------------------------------------------------------------------------

    def result_files(self) -> list[Path]:
        """The files in ``results/`` that hold a result (:func:`evaluation.results.read_results`;
        the caches are in ``results/cache/``)."""
        return list(read_results(self.results)[0])

    def report(self) -> bool:
        from evaluation.report import build_report

        path = self.report_dir / "report.md"
        files = self.result_files()
        newest = max((p.stat().st_mtime for p in files), default=0.0)
        if path.is_file() and path.stat().st_mtime >= newest:
            self.say(f"  {path} is up to date [dim](skipped)[/]")
            return False
        build_report(files, self.report_dir)
        self.say(f"  {path}")
        return True


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run_experiment(
    config: str | Path | Mapping[str, Any] | ExperimentConfig,
    *,
    out_dir: str | Path | None = None,
    progress: bool = True,
    until: str | None = None,
) -> ExperimentResult:
    """Run (or continue) the experiment a config describes; see the module docstring.

    ``out_dir`` overrides the config's ``out_dir`` (default ``experiments/<config name>``).
    ``progress`` shows the generation and evaluation progress bars. ``until`` stops after
    that stage (e.g. ``"generation"``, to free the GPU of the generation servers before
    training); the stages not run are missing from ``ExperimentResult.stages``.
    """
    if until is not None and until not in STAGES:
        raise ValueError(f"until must be one of {', '.join(STAGES)}, not {until!r}")
    cfg = config if isinstance(config, ExperimentConfig) else load_config(config)
    out = Path(out_dir or cfg.out_dir or Path("experiments") / cfg.name)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.raw)
    exp = _Experiment(cfg, out, progress)
    result = ExperimentResult(out_dir=out, runs=exp.runs,
                              adapters={m: p / "adapter" for m, p in exp.adapters.items()},
                              results_dir=exp.results, report=exp.report_dir / "report.md")
    exp.say(f"[bold]experiment {cfg.name}[/] in {out}")
    for i, stage in enumerate(STAGES, start=1):
        exp.console.rule(f"[bold]{i}/{len(STAGES)} {stage}")
        started = time.perf_counter()
        ran = getattr(exp, stage)()
        result.stages[stage] = "ran" if ran else "skipped"
        result.seconds[stage] = time.perf_counter() - started
        exp.say(f"  {stage}: {result.stages[stage]} in {result.seconds[stage]:.0f} s")
        if stage == until:
            exp.say(f"stopped after {stage} (until={until}); run again to continue")
            break
    return result
