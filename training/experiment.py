"""The paper's experiment end to end, at the scale of a config file: generate, train, evaluate.

:func:`run_experiment` reads a TOML (or YAML, when PyYAML is installed) config, or a dict of
the same shape, and runs five stages into one output folder:

1. **generation**: a Data Advisor and a Self-Instruct run with the same budget (target size,
   round bound, K) in ``<out>/runs/<method>``, either against the endpoints the config names
   (``base_url`` / ``<role>_url``) or against ONE embedded vLLM server started for both runs;
2. **training**: one LoRA adapter per data set on the same target model, each trained on its
   data set mixed with the same instruction data, in ``<out>/adapters/<method>`` (the adapter
   itself in ``<out>/adapters/<method>/adapter``);
3. **evaluation**: safety on CatQA and BeaverTails (judged by the refusal-string judge or Llama
   Guard), over-refusal (optional) and MMLU utility for the base model and both adapters, all
   served by ONE embedded vLLM server (``lora_modules``), or by an existing server that serves
   them under names the config gives (``[evaluation] base_url``); results in ``<out>/results``;
4. **diversity** of both data sets (and of reference files such as CatQA) in ``<out>/results``;
5. **report**: ``<out>/report/report.md`` and its plots (:func:`evaluation.report.build_report`).

Every stage is skipped when its output exists, so running the same config again after a crash
or Ctrl-C continues where it stopped; within a stage, a generation run resumes from its last
checkpoint, training from its last Trainer checkpoint, and an evaluation from the responses and
judgments already on disk. Changing the config of a stage that is done does not redo it:
delete the stage's output (or use another ``out_dir``) for that.

The config (every key optional unless said otherwise; see ``configs/cpu-small.toml``)::

    out_dir = "experiments/x"     # default for run_experiment(out_dir=None)
    seed = 0
    [generation]   methods, target_size, rounds, prompts_per_round (K), examples_per_request,
                   base_url, model, advisor_url/_model, generator_url/_model,
                   responder_url/_model, api_key_env, max_concurrency, seed_prompts_file,
                   seed_categories_file, max_model_len, server_args, [generation.context]
                   (any other graph.context.Context field)
    [training]     instructions (required), model (target; default SmolLM2-135M-Instruct),
                   ratio, val_fraction, instructions_limit, and any training.lora.TrainConfig
                   field (rank, alpha, learning_rate, max_steps, max_length, ...)
    [evaluation]   catqa, catqa_limit, beavertails, beavertails_limit, overrefusal,
                   overrefusal_name, overrefusal_limit, mmlu, mmlu_limit, mmlu_method, judge,
                   judge_url, judge_model, judge_api_key_env, judge_max_concurrency,
                   prompt_format (auto/chat/plain), max_tokens, max_concurrency, max_model_len,
                   server_args, api_key_env, base_url, base_model, adapter_models
    [diversity]    references, size, seeds

Relative paths in the config are relative to the working directory, as on the command line.
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from graph.graph import METHODS
from tools.llm import Endpoint

STAGES = ("generation", "training", "evaluation", "diversity", "report")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``--max-lora-rank`` values vLLM accepts."""
ROLES = ("advisor", "generator", "responder")
DEFAULT_ALIASES = (None, "", "default")


class ConfigError(ValueError):
    """The experiment config is not valid."""


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def _take(cls: type, values: Mapping[str, Any], section: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"[{section}]: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


@dataclass
class GenerationConfig:
    """``[generation]``: both methods get the same budget and the same endpoints."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    target_size: int | None = 100
    """Stop a run once this many prompts are kept."""
    rounds: int | None = None
    """Round bound (default: effectively none with a target size, else 10)."""
    prompts_per_round: int = 10
    examples_per_request: int = 3
    base_url: str | None = None
    """OpenAI-compatible server for every role; without it, one embedded vLLM server."""
    model: str | None = None
    """Served name with ``base_url``, else HF id or path (default SmolLM2-135M-Instruct)."""
    advisor_url: str | None = None
    advisor_model: str | None = None
    generator_url: str | None = None
    generator_model: str | None = None
    responder_url: str | None = None
    responder_model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 32
    seed_prompts_file: str | None = None
    seed_categories_file: str | None = None
    max_model_len: int = 4096
    """Of the embedded server."""
    server_args: list[str] = field(default_factory=list)
    """More arguments of the embedded vLLM server (e.g. ``--gpu-memory-utilization 0.5``)."""
    context: dict[str, Any] = field(default_factory=dict)
    """Any other :class:`graph.context.Context` field (temperatures, principles, ...)."""

    def __post_init__(self) -> None:
        for method in self.methods:
            if method not in METHODS:
                raise ConfigError(f"[generation] methods: unknown method {method!r}")
        if not self.methods:
            raise ConfigError("[generation] methods is empty")
        if self.target_size is None and self.rounds is None:
            raise ConfigError("[generation] needs target_size or rounds")
        for name in ("rounds", "target_size", "prompts_per_round", "examples_per_request",
                     "max_concurrency"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"[generation] {name}: got {value!r}; must be an integer >= 1")
        from graph.context import Context

        known = {f.name for f in fields(Context)} - {"data_path"}
        unknown = sorted(set(self.context) - known)
        if unknown:
            raise ConfigError(f"[generation.context]: unknown Context field(s) {unknown}")


@dataclass
class TrainingConfig:
    """``[training]``: the mix and the LoRA hyperparameters (a ``TrainConfig`` in ``lora``)."""

    instructions: str = ""
    """Instruction data (Alpaca JSON/JSONL, ``{prompt, response}`` rows, or ``hf:<id>``)."""
    model: str | None = None
    """Target model: HF id or path (default: the embedded SmolLM2-135M-Instruct)."""
    ratio: float | None = None
    """Safety share of the mix (None: all safety data and as many instructions)."""
    val_fraction: float = 0.05
    instructions_limit: int | None = None
    """Draw at most this many instruction examples (seeded) before mixing."""
    lora: dict[str, Any] = field(default_factory=dict)
    """:class:`training.lora.TrainConfig` fields."""

    def train_config(self, seed: int) -> Any:
        """The :class:`training.lora.TrainConfig` of this section."""
        from training.lora import TrainConfig

        return TrainConfig.from_dict({"seed": seed, **self.lora})


@dataclass
class EvaluationConfig:
    """``[evaluation]``: data sets, limits, judge and how the models are served."""

    catqa: str | None = None
    catqa_limit: int | None = None
    beavertails: str | None = None
    beavertails_limit: int | None = None
    overrefusal: str | None = None
    overrefusal_name: str = "overrefusal"
    overrefusal_limit: int | None = None
    mmlu: str | None = None
    mmlu_limit: int | None = None
    mmlu_method: str = "loglik"
    judge: str = "refusal"
    judge_url: str | None = None
    judge_model: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_max_concurrency: int = 8
    prompt_format: str = "auto"
    """``auto``: the target's chat template, or (without one) a chat template that renders the
    training's plain format, so a base model is asked the way its adapter was trained."""
    max_tokens: int = 128
    max_concurrency: int = 16
    max_model_len: int = 2048
    server_args: list[str] = field(default_factory=list)
    api_key_env: str = "OPENAI_API_KEY"
    base_url: str | None = None
    """Evaluate on this existing server (no embedded one); models by their served names."""
    base_model: str | None = None
    """Served name of the base model with ``base_url`` (default: the training model)."""
    adapter_models: dict[str, str] = field(default_factory=dict)
    """Served names of the adapters with ``base_url`` (default: the method names)."""

    def __post_init__(self) -> None:
        if self.prompt_format not in ("auto", "chat", "plain"):
            raise ConfigError("[evaluation] prompt_format must be auto, chat or plain")
        if self.mmlu_method not in ("loglik", "generate"):
            raise ConfigError("[evaluation] mmlu_method must be loglik or generate")
        if not (self.catqa or self.beavertails or self.overrefusal or self.mmlu):
            raise ConfigError("[evaluation] names no data set (catqa, beavertails, mmlu, ...)")


@dataclass
class DiversityConfig:
    """``[diversity]``: reference data sets and the equal size of the comparison."""

    references: list[str] = field(default_factory=list)
    size: int | None = None
    """Compare distinct-n at this many prompts (default and cap: the smallest generated data
    set; references at least that large are compared at the same size)."""
    seeds: int = 5


@dataclass
class ExperimentConfig:
    """A whole experiment config."""

    generation: GenerationConfig
    training: TrainingConfig
    evaluation: EvaluationConfig
    diversity: DiversityConfig
    out_dir: str | None = None
    seed: int = 0
    name: str = "experiment"
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """The generation methods compared."""
        return list(self.generation.methods)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file as a dict: TOML (``tomllib``), or YAML when PyYAML is installed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml)") from exc
        data = yaml.safe_load(path.read_text("utf-8")) or {}
    else:
        import tomllib

        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    return data


def load_config(source: str | Path | Mapping[str, Any]) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a config file or a dict of the same shape."""
    if isinstance(source, Mapping):
        data, name = dict(source), str(source.get("name") or "experiment")
    else:
        data, name = read_config_file(source), Path(source).stem
    data = json.loads(json.dumps(data, default=str))  # plain JSON types, a private copy
    top = {"generation", "training", "evaluation", "diversity", "out_dir", "seed", "name"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; known: {sorted(top)}")
    training = dict(data.get("training") or {})
    own = {f.name for f in fields(TrainingConfig)} - {"lora"}
    lora = {k: training.pop(k) for k in list(training) if k not in own}
    lora.update(training.pop("lora", {}) if isinstance(training.get("lora"), dict) else {})
    train_cfg = _take(TrainingConfig, {**training, "lora": lora}, "training")
    if not train_cfg.instructions:
        raise ConfigError("[training] instructions is required (the instruction data to mix)")
    seed = int(data.get("seed", 0))
    train_cfg.train_config(seed)  # validate the LoRA fields now, not after generation
    return ExperimentConfig(
        generation=_take(GenerationConfig, data.get("generation") or {}, "generation"),
        training=train_cfg,
        evaluation=_take(EvaluationConfig, data.get("evaluation") or {}, "evaluation"),
        diversity=_take(DiversityConfig, data.get("diversity") or {}, "diversity"),
        out_dir=data.get("out_dir"),
        seed=seed,
        name=str(data.get("name") or name),
        raw=data,
    )


# ---------------------------------------------------------------------------------------------
# Training one adapter (also the `train` command)
# ---------------------------------------------------------------------------------------------


def train_adapter(
    safety: str | Path | Sequence[Mapping[str, str]],
    instructions: str | Path | Sequence[Mapping[str, str]],
    out_dir: str | Path,
    *,
    model: str | Path | None = None,
    config: Any = None,
    ratio: float | None = None,
    seed: int = 0,
    val_fraction: float = 0.05,
    instructions_limit: int | None = None,
    resume: bool = True,
) -> tuple[Any, Any]:
    """Mix safety and instruction data and train a LoRA adapter into ``out_dir``.

    ``safety`` / ``instructions`` are sources :func:`training.mix.load_safety` /
    :func:`training.mix.load_instructions` read, or lists of examples. ``model`` is the target
    (HF id or path; None: the embedded SmolLM2-135M-Instruct). ``instructions_limit`` draws at
    most that many instruction examples (seeded) before mixing. Returns the
    :class:`training.lora.TrainResult` and the :class:`training.mix.MixSplits`; the mix counts
    are also written to ``out_dir/mix.json``.
    """
    from tools.default_model import resolve_model
    from training.lora import TrainConfig, train_lora
    from training.mix import build_mix, load_instructions, load_safety

    safety_rows = (load_safety(safety) if isinstance(safety, str | Path)
                   else [dict(e, source="safety") for e in safety])
    instr_rows = (load_instructions(instructions) if isinstance(instructions, str | Path)
                  else [dict(e, source="instruction") for e in instructions])
    if instructions_limit is not None and len(instr_rows) > instructions_limit:
        instr_rows = random.Random(seed).sample(instr_rows, instructions_limit)
    splits = build_mix(safety_rows, instr_rows, ratio=ratio, seed=seed,
                       val_fraction=val_fraction)
    config = config or TrainConfig(seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mix.json").write_text(json.dumps({
        "counts": splits.counts(), "ratio": ratio, "seed": seed, "val_fraction": val_fraction,
        "instructions_limit": instructions_limit,
        "safety": str(safety) if isinstance(safety, str | Path) else "<list>",
        "instructions": (str(instructions) if isinstance(instructions, str | Path)
                         else "<list>"),
    }, indent=2) + "\n", "utf-8")
    result = train_lora(resolve_model(None if model is None else str(model)), splits.train,
                        splits.validation, out, config, resume=resume)
    return result, splits


def adapter_done(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a finished :func:`train_adapter` run (adapter and config)."""
    out = Path(out_dir)
    adapter = out / "adapter"
    return ((out / "train_config.json").is_file() and (adapter / "adapter_config.json").is_file()
            and any(adapter.glob("adapter_model.*")))


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


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


def _is_default(model: str | None) -> bool:
    from tools.default_model import DEFAULT_MODEL_NAME

    return model in DEFAULT_ALIASES or model == DEFAULT_MODEL_NAME


def _slug(text: str) -> str:
    """File-name part of a label or data set name, as the evaluation modules write it."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


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
            embedded_roles[role] = None if _is_default(model) else model
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
    """``new``, ``finished`` or ``partial``."""
    from graph.graph import compile_graph, run_finished
    from graph.runner import RUN_FILE, Run, checkpointer
    from graph.state import State

    if not (folder / RUN_FILE).is_file():
        return "new"
    run = Run.load(folder)
    with checkpointer(run) as saver:
        snapshot = compile_graph(run.method, saver).get_state(run.config())
    if snapshot.values and not snapshot.next and run_finished(State(**snapshot.values),
                                                               run.context):
        return "finished"
    return "partial"


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
                "examples_per_request": gen.examples_per_request,
                "seed": self.cfg.seed,
                "api_key_env": gen.api_key_env,
                "max_concurrency": gen.max_concurrency,
                "seed_prompts_file": gen.seed_prompts_file,
                "seed_categories_file": gen.seed_categories_file,
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
        tr = self.cfg.training
        todo = [m for m in self.cfg.methods if not adapter_done(self.adapters[m])]
        for m in self.cfg.methods:
            if m not in todo:
                self.say(f"  {m}: adapter in {self.adapters[m] / 'adapter'} [dim](skipped)[/]")
        if not todo:
            return False
        from training.mix import load_instructions

        instructions = load_instructions(tr.instructions)
        for m in todo:
            self.say(f"  {m}: training on {self.runs[m]} + {tr.instructions} -> "
                     f"{self.adapters[m]}")
            result, splits = train_adapter(
                self.runs[m], instructions, self.adapters[m], model=tr.model,
                config=tr.train_config(self.cfg.seed), ratio=tr.ratio, seed=self.cfg.seed,
                val_fraction=tr.val_fraction, instructions_limit=tr.instructions_limit)
            counts = {k: ", ".join(f"{n} {src}" for src, n in sorted(v.items()))
                      for k, v in splits.counts().items()}
            self.say(f"  {m}: {result.global_step} steps; train {counts['train']}, validation "
                     f"{counts['validation']}; last train loss {_fmt(result.train_loss)}, "
                     f"validation loss {_fmt(result.eval_loss)}")
        return True

    # -- 3. evaluation ------------------------------------------------------------------------

    def _labels(self) -> list[str]:
        return ["base", *self.cfg.methods]

    def _tasks(self) -> list[tuple[str, str, str, Path]]:
        """``(label, kind, dataset, result file)`` of every evaluation."""
        ev = self.cfg.evaluation
        tasks = []
        for label in self._labels():
            for dataset, source in (("catqa", ev.catqa), ("beavertails", ev.beavertails)):
                if source:
                    tasks.append((label, "safety", dataset, self.results
                                  / f"safety-{_slug(dataset)}-{_slug(label)}.json"))
            if ev.overrefusal:
                name = ev.overrefusal_name
                tasks.append((label, "overrefusal", name, self.results
                              / f"overrefusal-{_slug(name)}-{_slug(label)}.json"))
            if ev.mmlu:
                tasks.append((label, "utility", "mmlu",
                              self.results / f"utility-mmlu-{label}.json"))
        return tasks

    def evaluation(self) -> bool:
        from evaluation.data import load_beavertails, load_catqa, load_mmlu, load_questions
        from evaluation.judges import make_judge
        from evaluation.safety import evaluate_overrefusal, evaluate_safety
        from evaluation.utility import evaluate_utility

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
        data: dict[str, Any] = {}
        for _, kind, dataset, _ in todo:
            if dataset in data:
                continue
            if kind == "safety":
                loader = load_catqa if dataset == "catqa" else load_beavertails
                data[dataset] = loader(ev.catqa if dataset == "catqa" else ev.beavertails)
            elif kind == "overrefusal":
                data[dataset] = load_questions(ev.overrefusal)  # type: ignore[arg-type]
            else:
                data[dataset] = load_mmlu(ev.mmlu)  # type: ignore[arg-type]
        judge = None
        if any(kind == "safety" for _, kind, _, _ in todo):
            endpoint = (Endpoint(ev.judge_url, ev.judge_model or "llama-guard",
                                 ev.judge_api_key_env) if ev.judge_url else None)
            options = {"max_concurrency": ev.judge_max_concurrency} if endpoint else {}
            judge = make_judge(ev.judge, endpoint, **options)
        self.results.mkdir(parents=True, exist_ok=True)
        limits = {"catqa": ev.catqa_limit, "beavertails": ev.beavertails_limit,
                  ev.overrefusal_name: ev.overrefusal_limit, "mmlu": ev.mmlu_limit}
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
                        data[dataset], backend="endpoint", method=ev.mmlu_method,  # type: ignore[arg-type]
                        endpoint=endpoint, out_dir=self.results,
                        max_concurrency=ev.max_concurrency, **common)
                    shown = f"accuracy {100 * result['accuracy']:.1f}%"
                self.say(f"  {label} on {dataset}: {shown} (n={result['n']}, "
                         f"{time.perf_counter() - started:.0f} s)")
        return True

    @contextmanager
    def _eval_server(self) -> Iterator[tuple[str, dict[str, str], str, str]]:
        """(base URL, served name per label, base model's name, prompt format)."""
        from tools.default_model import DEFAULT_MODEL_NAME

        ev, tr = self.cfg.evaluation, self.cfg.training
        target = None if _is_default(tr.model) else str(tr.model)
        if ev.base_url is not None:
            base = ev.base_model or target or DEFAULT_MODEL_NAME
            names = {"base": base, **{m: ev.adapter_models.get(m, m) for m in self.cfg.methods}}
            fmt = "chat" if ev.prompt_format == "auto" else ev.prompt_format
            yield ev.base_url, names, base, fmt
            return
        from tools.server import EmbeddedServer

        extra = list(ev.server_args)
        fmt = ev.prompt_format
        if fmt == "auto":
            fmt = "chat"
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
        from training.format import PLAIN_TEMPLATE, has_chat_template

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(target))
        if has_chat_template(tokenizer):
            return None
        before, after = PLAIN_TEMPLATE.split("{prompt}")
        template = (
            "{% if bos_token %}{{ bos_token }}{% endif %}{% for m in messages %}"
            "{% if m['role'] == 'user' %}" + before + "{{ m['content'] }}" + after
            + "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}"
            "{% endfor %}"
        )
        path = self.out / "plain_chat_template.jinja"
        path.write_text(template, "utf-8")
        return path

    # -- 4. diversity -------------------------------------------------------------------------

    def diversity(self) -> bool:
        from evaluation.data import load_prompts
        from evaluation.diversity import (
            _default_name,
            evaluate_diversity,
            result_path,
            write_result,
        )

        dv = self.cfg.diversity
        sources: dict[str, str] = {m: str(folder) for m, folder in self.runs.items()}
        for ref in dv.references:
            sources.setdefault(_default_name(ref), ref)
        paths = {name: result_path("diversity", name, self.results) for name in sources}
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
        """The result JSON files in ``results/`` (not the responses' meta files)."""
        kinds = ("safety", "overrefusal", "utility", "diversity")
        return [p for k in kinds for p in sorted(self.results.glob(f"{k}-*.json"))]

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
    (out / "config.json").write_text(json.dumps(cfg.raw, indent=2) + "\n", "utf-8")
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
