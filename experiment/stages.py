"""The experiment's five stages and :func:`run_experiment`, which runs them into one folder.

:func:`run_experiment` takes a config (:mod:`experiment.config`) and runs, in ``out_dir``:

1. **generation**: a Data Advisor and a Self-Instruct run with the same budget (target size,
   round bound, K) in ``<out>/runs/<method>``, either against the endpoints the config names
   (``base_url`` / ``<role>_url``) or against ONE embedded vLLM server started for both runs;
2. **training**: per target model, one LoRA adapter per data set, each trained on its data set
   mixed with the same instruction data (:func:`training.launch.train_adapter`), in
   ``<out>/adapters/<method>`` (the adapter itself in ``<out>/adapters/<method>/adapter``), or
   ``<out>/adapters/<target>/<method>`` with ``[[targets]]``;
3. **evaluation**: per target, safety on CatQA and BeaverTails (judged by the refusal-string
   judge or Llama Guard), over-refusal (optional) and MMLU utility for the base model and both
   adapters, served by an embedded vLLM server (the base model with its adapters as LoRA
   modules; an adapter on an architecture vLLM serves no LoRA for, such as Falcon, merged once
   into a copy of the base and served by its own server: :mod:`tools.adapter_serving`), or by
   an existing server that serves them under names the config gives (``[evaluation]
   base_url``); results in ``<out>/results`` (``<out>/results/<target>`` with ``[[targets]]``);
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console

from evaluation.results import (
    PromptFormat,
    ResultKind,
    UtilityFormat,
    read_results,
    result_filename,
)
from experiment.config import (
    EvalSet,
    ExperimentConfig,
    GenerationConfig,
    TrainingConfig,
    load_config,
)
from graph.context import ROLES
from tools.default_model import is_default_model
from tools.files import write_atomic, write_json
from tools.llm import Endpoint
from tools.prompt_format import recorded_format

if TYPE_CHECKING:
    from evaluation.data import PromptSet

STAGES = ("generation", "training", "evaluation", "diversity", "report")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``--max-lora-rank`` values vLLM accepts."""




@dataclass
class ExperimentResult:
    """Where an experiment's outputs are and what each stage did (``ran`` / ``skipped``)."""

    out_dir: Path
    runs: dict[str, Path]
    adapters: dict[str, Path]
    """The adapter folders by method (``<target>/<method>`` with ``[[targets]]``)."""
    results_dir: Path
    report: Path
    result_files: list[Path] = field(default_factory=list)
    """The files holding a result (every target's), when the experiment stopped."""
    stages: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Target:
    """A target model and where its adapters and results go."""

    name: str | None
    """None: the one target of ``[training] model`` (folders without a target level)."""
    model: str | None
    training: TrainingConfig
    prompt_format: str
    adapter_serving: str
    adapters: dict[str, Path]
    results: Path

    def say(self, text: str) -> str:
        """``text`` (indented) with the target's name after its indent, when it has one."""
        body = text.lstrip(" ")
        return text if self.name is None else f"{text[:len(text) - len(body)]}{self.name}: {body}"


@dataclass
class _ServerGroup:
    """Labels one evaluation server serves: the base model with its LoRA adapters, or one
    adapter's merged copy."""

    model: str | None
    labels: list[str]
    lora: dict[str, str] = field(default_factory=dict)
    served: dict[str, Any] = field(default_factory=dict)
    """Per label, how its adapter is served (``AdapterServing.record()``)."""


def _lora_rank(rank: int) -> int:
    return next((r for r in LORA_RANKS if r >= rank), rank)


@dataclass
class _Roles:
    """Endpoints of the generation roles: context values, and the embedded models if any."""

    values: dict[str, Any]
    embedded: dict[str | None, list[str]]
    """The roles each embedded server serves, by model (None: the default model); empty when
    every role has a URL."""


def _generation_roles(gen: GenerationConfig) -> _Roles:
    from tools.default_model import DEFAULT_MODEL_NAME

    values: dict[str, Any] = {}
    embedded: dict[str | None, list[str]] = {}
    judging = gen.judge or gen.context.get("judge")
    for role in ROLES:
        if role == "judge" and not judging:  # no judge: no endpoint, no server for it
            continue
        url = getattr(gen, f"{role}_url") or gen.base_url
        model = getattr(gen, f"{role}_model") or gen.model
        if url is None:
            embedded.setdefault(None if is_default_model(model) else model, []).append(role)
            values[f"{role}_base_url"] = values[f"{role}_model"] = None
        else:
            values[f"{role}_base_url"] = url
            values[f"{role}_model"] = model or DEFAULT_MODEL_NAME
    if not embedded:
        values["base_url"] = values["generator_base_url"]
        values["model"] = values["generator_model"]
    return _Roles(values, embedded)


def _run_status(folder: Path, overrides: Mapping[str, Any] | None = None) -> str:
    """``new`` (no run folder yet: create it), ``finished`` (skip it) or ``partial`` (resume
    it, also when not started): ``graph.runner.run_phase``, as ``status`` and ``resume`` see it,
    under the run's context with ``overrides`` (an iteration's larger target)."""
    from graph.context import Context
    from graph.runner import Run, run_phase
    from tools.store import RUN_FILE

    if not (folder / RUN_FILE).is_file():
        return "new"
    run = Run.load(folder)
    if overrides:
        run = replace(run, context=Context(**{**run.context.to_dict(), **overrides}))
    return "finished" if run_phase(run).name == "finished" else "partial"


class _Experiment:
    """One call of :func:`run_experiment`."""

    def __init__(self, cfg: ExperimentConfig, out: Path, progress: bool) -> None:
        self.cfg, self.out, self.progress = cfg, out, progress
        self.console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
        self.runs = {m: out / "runs" / m for m in cfg.methods}
        self.results = out / "results"
        self.report_dir = out / "report"
        self.logs = out / "logs"
        self.iteration = 1
        self.targets = self.targets_of(1)
        self._read_sets: dict[tuple[str, str], PromptSet] = {}

    def _read(self, s: EvalSet) -> PromptSet:
        """An evaluation set's questions (:class:`evaluation.data.PromptSet`), read once per
        experiment: its halves and the decontamination file share the one read."""
        key = (s.kind, s.name)
        if key not in self._read_sets:
            self._read_sets[key] = s.load()
        return self._read_sets[key]

    def targets_of(self, iteration: int) -> list[_Target]:
        """The targets with their folders in ``iteration`` (``iter-<i>`` subfolders of the
        adapters and results when there are several iterations)."""
        cfg = self.cfg
        return [self._target(t.name, t.model, cfg.training_of(t), t.prompt_format,
                             t.adapter_serving, iteration) for t in cfg.targets] or [
            self._target(None, cfg.training.model, cfg.training, None, "auto", iteration)]

    def _target(self, name: str | None, model: str | None, training: TrainingConfig,
                prompt_format: str | None, adapter_serving: str, iteration: int) -> _Target:
        adapters = self.out / "adapters" if name is None else self.out / "adapters" / name
        results = self.results if name is None else self.results / name
        sub = f"iter-{iteration}" if self.cfg.iterations > 1 else None
        return _Target(name, model, training, prompt_format or self.cfg.evaluation.prompt_format,
                       adapter_serving,
                       {m: adapters / m / sub if sub else adapters / m for m in self.cfg.methods},
                       results / sub if sub else results)

    def set_iteration(self, iteration: int) -> None:
        """Work on ``iteration`` from now on."""
        self.iteration, self.targets = iteration, self.targets_of(iteration)

    def _iteration_context(self, method: str) -> dict[str, Any]:
        """The generation context of this iteration: its target (each iteration adds
        ``size_per_iteration`` prompts to the same run, so training sees the union) and the
        failures it is steered by (the last iteration's, on the steering half)."""
        gen, cfg, i = self.cfg.generation, self.cfg, self.iteration
        if cfg.iterations == 1:
            return {}
        size = cfg.size_per_iteration or gen.target_size or 0
        return {"target_size": size * i, "rounds": (gen.rounds or 1_000_000) * i,
                "steer_from": [str(p) for p in self.steering_results(method, i - 1)]}

    def steering_results(self, method: str, iteration: int) -> list[Path]:
        """The safety results on the steering halves of ``method``'s adapters in
        ``iteration`` (every target), [] before the first."""
        if iteration < 1:
            return []
        return [t.results / "steer" / result_filename("safety", f"{s.name}-steer", method)
                for t in self.targets_of(iteration)
                for s in self.cfg.evaluation.sets() if s.kind == "safety"]

    def say(self, text: str) -> None:
        self.console.print(text)

    @cached_property
    def decontamination(self) -> list[str]:
        """The files generation and training are decontaminated against: the config's
        ``decontaminate``, else the prompts of the ``[evaluation]`` sets (read with the
        evaluation loaders, every safety and over-refusal set, whole, without the limits) in
        ``<out>/decontamination.jsonl``,
        rewritten with the same bytes while the sets are the same (a run records its hash)."""
        if self.cfg.decontaminate is not None:
            return list(self.cfg.decontaminate)
        from evaluation.data import load_mmlu

        ev = self.cfg.evaluation
        prompts = [q.prompt for s in ev.sets() for q in self._read(s).questions]
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
        status = {m: _run_status(folder, self._iteration_context(m))
                  for m, folder in self.runs.items()}
        for m in self.cfg.methods:
            if status[m] == "finished":
                self.say(f"  {m}: finished run in {self.runs[m]} [dim](skipped)[/]")
        todo = [m for m in self.cfg.methods if status[m] != "finished"]
        if not todo:
            return False
        from tools.server import EmbeddedServer

        roles = _generation_roles(gen)
        with ExitStack() as stack:
            endpoints = dict(roles.values)
            for model, served_roles in roles.embedded.items():
                name = "vllm-generation" + ("" if len(roles.embedded) == 1
                                            else "-" + "-".join(served_roles))
                server = EmbeddedServer(model, log_path=self.logs / f"{name}.log",
                                        max_model_len=gen.max_model_len,
                                        extra_args=gen.server_args)
                self.say(f"  starting the embedded vLLM server for {', '.join(served_roles)} "
                         f"({server.model_name}; log {server.log_path}) ...")
                stack.enter_context(server)
                self.say(f"  serving at {server.base_url} "
                         f"(up in {server.startup_seconds or 0:.0f} s)")
                if len(roles.embedded) == 1:
                    endpoints["base_url"], endpoints["model"] = (server.base_url,
                                                                 server.model_name)
                else:
                    for role in served_roles:
                        endpoints[f"{role}_base_url"] = server.base_url
                        endpoints[f"{role}_model"] = server.model_name
                        if role == "generator":
                            endpoints["base_url"], endpoints["model"] = (server.base_url,
                                                                         server.model_name)
            rounds = gen.rounds if gen.rounds is not None else (
                1_000_000 if gen.target_size else 10)
            base = {
                **gen.context,
                "rounds": rounds,
                "target_size": gen.target_size,
                "prompts_per_round": gen.prompts_per_round,
                "weaknesses_per_round": gen.weaknesses_per_round,
                "overlap_responses": gen.overlap_responses,
                "summary_update": gen.summary_update,
                "examples_per_request": gen.examples_per_request,
                "seed": self.cfg.seed,
                "api_key_env": gen.api_key_env,
                "max_concurrency": gen.max_concurrency,
                "seed_prompts_file": gen.seed_prompts_file,
                "seed_categories_file": gen.seed_categories_file,
                "decontaminate": self.decontamination,
                **{k: v for k, v in (("judge", gen.judge), ("taxonomy", gen.taxonomy)) if v},
                **endpoints,
            }
            for m in todo:
                folder = self.runs[m]
                if status[m] == "new":
                    self.say(f"  {m}: new run in {folder}")
                    # `data-advisor resume` restarts one embedded server, not several
                    one = next(iter(roles.embedded)) if len(roles.embedded) == 1 else None
                    run = create_run(folder, m,  # type: ignore[arg-type]
                                     Context(**{**base, **self._iteration_context(m)}),
                                     embedded=len(roles.embedded) == 1, embedded_model=one)
                    resume = False
                else:
                    run = Run.load(folder)
                    if run.method != m:
                        raise RunError(f"{folder} holds a {run.method} run, not {m}")
                    self.say(f"  {m}: resuming the run in {folder}")
                    resume = True
                # the run.json keeps "embedded" for a later `data-advisor resume`; here the
                # shared server (or the config's endpoints) serves it
                ctx = Context(**{**run.context.to_dict(), **endpoints,
                                 **self._iteration_context(m)})
                state = execute(replace(run, context=ctx, embedded=False), resume=resume,
                                show_progress=self.progress)
                self.say(f"  {m}: {state.kept} prompts kept, {state.responses} answered, "
                         f"{sum(state.rejected.values())} rejected")
        return True

    # -- 2. training --------------------------------------------------------------------------

    def training(self) -> bool:
        from training.lora import adapter_done

        todo = [(t, m) for t in self.targets for m in self.cfg.methods
                if not adapter_done(t.adapters[m])]
        for t in self.targets:
            for m in self.cfg.methods:
                if (t, m) not in todo:
                    self.say(t.say(f"  {m}: adapter in {t.adapters[m] / 'adapter'} "
                                   "[dim](skipped)[/]"))
        if not todo:
            return False
        from training.launch import train_adapter
        from training.mix import load_instructions

        instructions = load_instructions(self.cfg.training.instructions)
        for t, m in todo:
            tr = t.training
            self.say(t.say(f"  {m}: training {tr.model or 'the default model'} on {self.runs[m]} "
                           f"+ {tr.instructions} -> {t.adapters[m]}"))
            result, splits = train_adapter(
                self.runs[m], instructions, t.adapters[m], model=tr.model,
                config=tr.train_config(self.cfg.seed), ratio=tr.ratio, seed=self.cfg.seed,
                val_fraction=tr.val_fraction, instructions_limit=tr.instructions_limit,
                decontaminate=self.decontamination)
            counts = {k: ", ".join(f"{n} {src}" for src, n in sorted(v.items())) or "none"
                      for k, v in splits.counts().items()}
            self.say(t.say(f"  {m}: {result.global_step} steps; train {counts['train']}, "
                           f"validation {counts['validation']}; dropped as contaminated "
                           f"{counts['contaminated']}; last train loss "
                           f"{_fmt(result.train_loss)}, validation loss "
                           f"{_fmt(result.eval_loss)}"))
        return True

    # -- 3. evaluation ------------------------------------------------------------------------

    def _sets(self) -> dict[tuple[str, str], tuple[int | None, Callable[[], Any]]]:
        """``(kind, name) -> (limit, loader)`` of what this iteration evaluates: every set
        (MMLU included), and with several iterations each safety set as two halves, the
        reported one under the set's name and the steering one as ``<name>-steer``
        (:func:`evaluation.data.halves`, split by the experiment's seed)."""
        from evaluation.data import halves, load_mmlu

        ev, seed = self.cfg.evaluation, self.cfg.seed
        sets: dict[tuple[str, str], tuple[int | None, Callable[[], Any]]] = {}
        for s in ev.sets():
            if self.cfg.iterations > 1 and s.kind == "safety":
                for index, name in enumerate((f"{s.name}-steer", s.name)):
                    def half(s: EvalSet = s, index: int = index) -> PromptSet:
                        return halves(self._read(s), seed)[index]

                    sets["safety", name] = (s.limit, half)
            else:
                def whole(s: EvalSet = s) -> PromptSet:
                    return self._read(s)

                sets[s.kind, s.name] = (s.limit, whole)
        if ev.mmlu:
            mmlu = ev.mmlu
            sets["utility", "mmlu"] = (ev.mmlu_limit, lambda: load_mmlu(mmlu))
        return sets

    def _tasks(self, t: _Target) -> list[tuple[str, ResultKind, str, Path]]:
        """``(label, kind, dataset, result file)`` of every evaluation of a target in this
        iteration (the base model in the first only; steering halves in ``steer/``)."""
        labels = (["base"] if self.iteration == 1 else []) + self.cfg.methods
        tasks: list[tuple[str, ResultKind, str, Path]] = []
        for kind, name in self._sets():
            folder = t.results / "steer" if name.endswith("-steer") and self.cfg.iterations > 1 \
                else t.results
            kind_: ResultKind = "safety" if kind == "safety" else (
                "overrefusal" if kind == "overrefusal" else "utility")
            tasks += [(label, kind_, name, folder / result_filename(kind_, name, label))
                      for label in labels]
        return sorted(tasks, key=lambda task: labels.index(task[0]))

    def evaluation(self) -> bool:
        from evaluation.judges import make_judge
        from training.lora import adapter_done

        ev = self.cfg.evaluation
        todo: list[tuple[_Target, list[tuple[str, ResultKind, str, Path]]]] = []
        for t in self.targets:
            tasks = self._tasks(t)
            for label, _, dataset, path in tasks:
                if path.is_file():
                    self.say(t.say(f"  {label} on {dataset}: {path.name} [dim](skipped)[/]"))
            if left := [task for task in tasks if not task[3].is_file()]:
                todo.append((t, left))
        if not todo:
            return False
        for t, _ in todo:
            for m in self.cfg.methods:
                if ev.base_url is None and not adapter_done(t.adapters[m]):
                    raise FileNotFoundError(f"no trained adapter in {t.adapters[m]}")
        sets = self._sets()
        data: dict[tuple[str, str], Any] = {}
        for _, kind, dataset, _ in (task for _, tasks in todo for task in tasks):
            if (kind, dataset) not in data:
                data[kind, dataset] = sets[kind, dataset][1]()
        judge = None
        if any(kind == "safety" for _, tasks in todo for _, kind, _, _ in tasks):
            endpoint = (Endpoint(ev.judge_url, ev.judge_model or "llama-guard",
                                 ev.judge_api_key_env) if ev.judge_url else None)
            options = {"max_concurrency": ev.judge_max_concurrency} if endpoint else {}
            judge = make_judge(ev.judge, endpoint, **options)
        for t, tasks in todo:
            for group in self._server_groups(t, {label for label, _, _, _ in tasks}):
                with self._eval_server(t, group) as (base_url, names, model_name, fmt,
                                                     mmlu_fmt):
                    for label, kind, dataset, path in tasks:
                        if label in group.labels:
                            self._evaluate(t, label, kind, dataset, data[kind, dataset], judge,
                                           Endpoint(base_url, names[label], ev.api_key_env),
                                           model_name, (fmt, mmlu_fmt),
                                           group.served.get(label, {}), path.parent,
                                           sets[kind, dataset][0])
        return True

    def _evaluate(self, t: _Target, label: str, kind: ResultKind, dataset: str, items: Any,
                  judge: Any, endpoint: Endpoint, model_name: str,
                  formats: tuple[PromptFormat, UtilityFormat], served: Mapping[str, Any],
                  out_dir: Path, limit: int | None) -> None:
        """One model on one data set (its result file in ``out_dir``); ``formats``: the prompt
        format of the safety and over-refusal sets, and of MMLU."""
        from evaluation.safety import evaluate_overrefusal, evaluate_safety
        from evaluation.utility import evaluate_utility

        ev = self.cfg.evaluation
        fmt, mmlu_fmt = formats
        adapter = str(t.adapters[label] / "adapter") if label != "base" else None
        if kind != "utility":  # a PromptSet: its questions, and how they were read
            items, read = items.questions, {"data": items.data}
        else:
            read = {}
        common: dict[str, Any] = dict(
            **read, label=label, model=model_name, adapter=adapter, limit=limit,
            progress=self.progress, target=t.name,
            iteration=self.iteration if self.cfg.iterations > 1 else None,
            serving={"server": ev.base_url or "embedded vLLM", "served_name": endpoint.model,
                     **served})
        started = time.perf_counter()
        if kind == "safety":
            assert judge is not None  # made for the safety tasks
            result = evaluate_safety(
                items, dataset=dataset, endpoint=endpoint, judge=judge, out_dir=out_dir,
                max_tokens=ev.max_tokens, prompt_format=fmt,
                max_concurrency=ev.max_concurrency, **common)
            shown = f"safety score {100 * result['safety_score']:.1f}%"
        elif kind == "overrefusal":
            result = evaluate_overrefusal(
                items, dataset=dataset, endpoint=endpoint, out_dir=out_dir,
                max_tokens=ev.max_tokens, prompt_format=fmt,
                max_concurrency=ev.max_concurrency, **common)
            shown = f"refusal rate {100 * result['refusal_rate']:.1f}%"
        else:
            # the config checked both choices; this names them for the type checker
            method: Literal["loglik", "generate"] = (
                "generate" if ev.mmlu_method == "generate" else "loglik")
            result = evaluate_utility(
                items, backend="endpoint", method=method, endpoint=endpoint,
                prompt_format=mmlu_fmt, out_dir=out_dir, max_concurrency=ev.max_concurrency,
                **common)
            shown = f"accuracy {100 * result['accuracy']:.1f}%"
        self.say(t.say(f"  {label} on {dataset}: {shown} (n={result['n']}, "
                       f"{time.perf_counter() - started:.0f} s)"))

    def _server_groups(self, t: _Target, labels: set[str]) -> list[_ServerGroup]:
        """The evaluation servers a target's ``labels`` need: the base model with the adapters
        vLLM serves as LoRA, then one server per adapter it cannot (a merged copy; made here
        once, :func:`tools.adapter_serving.plan_serving`). One group with ``base_url``."""
        order = [label for label in ["base", *self.cfg.methods] if label in labels]
        if self.cfg.evaluation.base_url is not None:
            return [_ServerGroup(t.model, order)]
        from tools.adapter_serving import plan_serving

        target = None if is_default_model(t.model) else str(t.model)
        plan = plan_serving(target, {m: t.adapters[m] / "adapter" for m in order if m != "base"},
                            how=t.adapter_serving, log=self.say)
        served = {m: way.record() for m, way in plan.items()}
        lora = [m for m in order if m == "base" or plan[m].served_as == "lora"]
        groups = [_ServerGroup(t.model, lora, {m: str(plan[m].adapter) for m in lora
                                               if m != "base"}, served)] if lora else []
        for m, way in plan.items():
            if way.served_as == "merged":
                self.say(t.say(f"  {m}: vLLM serves no LoRA adapters on {way.architecture}; "
                               f"serving the adapter merged into a copy ({way.model})"))
                groups.append(_ServerGroup(str(way.model), [m], {}, {m: served[m]}))
        return groups

    @contextmanager
    def _eval_server(self, t: _Target,
                     group: _ServerGroup) -> Iterator[tuple[str, dict[str, str], str,
                                                            PromptFormat, UtilityFormat]]:
        """(base URL, served name per label, base model's name, prompt format, MMLU's prompt
        format). A target without a chat template (``auto``) or set to ``plain`` is asked
        MMLU in the plain training format too (:mod:`evaluation.utility`)."""
        from tools.default_model import DEFAULT_MODEL_NAME
        from tools.server import served_name

        ev = self.cfg.evaluation
        target = None if is_default_model(t.model) else str(t.model)
        # auto is chat (through a plain chat template when the target has none, below)
        fmt: PromptFormat = "plain" if t.prompt_format == "plain" else "chat"
        if ev.base_url is not None:
            base = ev.base_model or target or DEFAULT_MODEL_NAME
            names = {"base": base, **{m: ev.adapter_models.get(m, m) for m in self.cfg.methods}}
            # auto: plain when the adapters were trained in it (this target's all alike)
            trained = {recorded_format(t.adapters[m] / "adapter") for m in self.cfg.methods
                       if (t.adapters[m] / "adapter").is_dir()}
            plain = fmt == "plain" or (t.prompt_format == "auto" and trained == {"plain"})
            yield ev.base_url, names, base, fmt, "plain" if plain else "raw"
            return
        from tools.server import EmbeddedServer

        extra = list(ev.server_args)
        mmlu_fmt: UtilityFormat = "plain" if fmt == "plain" else "raw"
        if t.prompt_format == "auto":
            template = self._plain_chat_template(t, target)
            if template is not None:
                mmlu_fmt = "plain"
                extra += ["--chat-template", str(template)]
                self.say(t.say(f"  the target has no chat template: serving {template.name} "
                               "(the training's plain format)"))
        suffix = "" if t.name is None else f"-{t.name}"
        if group.model != t.model:  # one adapter's merged copy, served under its label
            label = group.labels[0]
            server = EmbeddedServer(
                group.model, served_model_name=label, max_model_len=ev.max_model_len,
                log_path=self.logs / f"vllm-evaluation{suffix}-{label}-merged.log",
                extra_args=extra)
            what = f"{label}: the merged copy of its adapter"
        else:
            rank = int(t.training.train_config(self.cfg.seed).rank)
            server = EmbeddedServer(
                target, log_path=self.logs / f"vllm-evaluation{suffix}.log",
                max_model_len=ev.max_model_len, lora_modules=group.lora or None,
                max_lora_rank=_lora_rank(rank), extra_args=extra)
            what = f"{server.model_name} + {len(group.lora)} LoRA adapters"
        self.say(t.say(f"  starting the embedded vLLM server for evaluation ({what}; log "
                       f"{server.log_path}) ..."))
        with server:
            self.say(t.say(f"  serving at {server.base_url} (up in "
                           f"{server.startup_seconds or 0:.0f} s)"))
            names = {label: server.model_name if label == "base" else label
                     for label in group.labels}
            yield server.base_url, names, served_name(target), fmt, mmlu_fmt

    def _plain_chat_template(self, t: _Target, target: str | None) -> Path | None:
        """A chat template file rendering the training's plain format, for a target without
        a chat template of its own (None when it has one)."""
        from transformers import AutoTokenizer

        from tools.default_model import resolve_model
        from training.format import has_chat_template, plain_chat_template

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(target))
        if has_chat_template(tokenizer):
            return None
        name = "plain_chat_template" + ("" if t.name is None else f"-{t.name}")
        path = self.out / f"{name}.jinja"
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
        gen = self.cfg.generation
        gen_taxonomy = gen.taxonomy or gen.context.get("taxonomy")  # the runs' coverage
        # the generated data sets are compared at an equal size: the smallest of them (capped
        # by the config's size); a smaller reference gets its full curve only
        smallest = min(len(loaded[m]) for m in self.cfg.methods)
        size = min(dv.size, smallest) if dv.size else smallest
        for name, questions in loaded.items():
            at = size if 0 < size <= len(questions) else None
            result = evaluate_diversity(questions, name=name, size=at, seeds=dv.seeds,
                                        taxonomy=gen_taxonomy)
            result["source"] = sources[name]
            path = write_result(result, self.results)
            curve = (result["distinct_at_size"] or {}).get("values") or result["distinct"]
            self.say(f"  {name}: {result['n_prompts']} prompts, {result['categories']} "
                     f"categories, distinct-4 {curve['4']:.3f} at "
                     f"{at or len(questions)} prompts -> {path.name}")
        return True

    # -- 5. report ----------------------------------------------------------------------------

    def result_files(self) -> list[Path]:
        """The files in ``results/`` (each target's ``results/<target>/``, each iteration's
        ``iter-<i>/``) that hold a result (:func:`evaluation.results.read_results`; the caches
        are in ``cache/``, the steering halves' results in ``steer/``)."""
        folders = dict.fromkeys([self.results, *(t.results for i in range(self.cfg.iterations)
                                                 for t in self.targets_of(i + 1))])
        return [path for folder in folders for path in read_results(folder)[0]]

    # -- iterations ---------------------------------------------------------------------------

    def steering_rate(self, method: str, iteration: int) -> float | None:
        """``method``'s harmful rate on the steering halves in ``iteration`` (all sets and
        targets pooled), None when a result is missing."""
        from evaluation.results import SafetyResult, read_result

        harmful = n = 0.0
        for path in self.steering_results(method, iteration):
            if not path.is_file():
                return None
            result = read_result(path)
            if not isinstance(result, SafetyResult) or result.n is None:
                return None
            harmful += (result.harmful_rate or 0.0) * result.n
            n += result.n
        return harmful / n if n else None

    def no_gain(self) -> bool:
        """Whether this iteration's harmful rate on the steering halves fell for no method
        (``stop_when_no_gain``); the rates go to ``<out>/iterations.json``."""
        i = self.iteration
        rates = {m: [self.steering_rate(m, k) for k in range(1, i + 1)]
                 for m in self.cfg.methods}
        write_json(self.out / "iterations.json", {
            "steering_harmful_rate": rates, "iterations_done": i,
            "stop_when_no_gain": self.cfg.stop_when_no_gain})
        if not self.cfg.stop_when_no_gain or i < 2:
            return False
        fell = [m for m, r in rates.items()
                if r[-1] is not None and r[-2] is not None and r[-1] < r[-2]]
        self.say("  harmful rate on the steering halves: " + "; ".join(
            f"{m} {_pct(r[-2])} -> {_pct(r[-1])}" for m, r in rates.items()))
        return not fell

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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


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
    result = ExperimentResult(out_dir=out, runs=exp.runs, adapters={},
                              results_dir=exp.results, report=exp.report_dir / "report.md")
    exp.say(f"[bold]experiment {cfg.name}[/] in {out}")
    n = cfg.iterations
    steps = [(i, stage) for i in range(1, n + 1) for stage in STAGES[:3]] + [
        (n, stage) for stage in STAGES[3:]]
    stopped = False
    for number, (i, stage) in enumerate(steps, start=1):
        if stopped and stage in STAGES[:3]:
            continue
        exp.set_iteration(i)
        name = stage if n == 1 or stage not in STAGES[:3] else f"{stage} {i}"
        exp.console.rule(f"[bold]{number}/{len(steps)} {name}")
        started = time.perf_counter()
        ran = getattr(exp, stage)()
        result.stages[name] = "ran" if ran else "skipped"
        result.seconds[name] = time.perf_counter() - started
        exp.say(f"  {name}: {result.stages[name]} in {result.seconds[name]:.0f} s")
        if stage == until:
            exp.say(f"stopped after {name} (until={until}); run again to continue")
            break
        if stage == "evaluation" and n > 1 and i < n and exp.no_gain():
            exp.say(f"  no method's harmful rate on the steering halves fell in iteration {i}: "
                    "stopping the iterations (stop_when_no_gain)")
            stopped = True
        elif stage == "evaluation" and n > 1:
            exp.no_gain()  # writes iterations.json
    result.adapters = {m if t.name is None else f"{t.name}/{m}": p / "adapter"
                       for t in exp.targets for m, p in t.adapters.items()}
    result.result_files = exp.result_files()
    return result
