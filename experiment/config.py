"""The experiment's config: its schema (one dataclass per section), defaults and loader.

:func:`load_config` reads a TOML (or YAML, when PyYAML is installed) file, or a dict of the
same shape, into an :class:`ExperimentConfig`, checking every section before anything runs
(unknown keys, bad values, the LoRA fields): a bad config fails with a :class:`ConfigError`
that names the key, never half-way through an experiment.

The config (every key optional unless said otherwise; see ``configs/cpu-small.toml``)::

    out_dir = "experiments/x"     # default for run_experiment(out_dir=None)
    seed = 0
    decontaminate = [...]         # evaluation files no generated or training prompt may overlap
                                  # (default: the [evaluation] sets; [] for none)
    [generation]   methods, target_size, rounds, prompts_per_round (K), weaknesses_per_round
                   (W), overlap_responses, summary_update, examples_per_request,
                   base_url, model, advisor_url/_model, generator_url/_model,
                   responder_url/_model, judge (a prompt judge: llamaguard3 or llm; default
                   none), judge_url/_model, taxonomy, api_key_env, max_concurrency,
                   seed_prompts_file, seed_categories_file, max_model_len, server_args,
                   [generation.context] (any other graph.context.Context field)
    [training]     instructions (required), model (target; default SmolLM2-135M-Instruct),
                   ratio, val_fraction, instructions_limit, and any training.lora.TrainConfig
                   field (rank, alpha, learning_rate, max_steps, max_length, ...)
    [evaluation]   catqa, catqa_limit, beavertails, beavertails_limit, overrefusal,
                   overrefusal_name, overrefusal_limit, [[evaluation.safety_sets]] and
                   [[evaluation.overrefusal_sets]] (data, name, prompt_column,
                   category_column, where, limit: any prompt set, each reported under its
                   name), mmlu, mmlu_limit, mmlu_method, judge,
                   judge_url, judge_model, judge_api_key_env, judge_max_concurrency,
                   prompt_format (auto/chat/plain), max_tokens, max_concurrency, max_model_len,
                   server_args, api_key_env, base_url, base_model, adapter_models
    [diversity]    references, size, seeds
    [[targets]]    (optional, a list; instead of [training] model) name, model, prompt_format,
                   adapter_serving, [targets.training] (any [training] key but instructions
                   and model: the LoRA fields, ratio, val_fraction, instructions_limit)

``iterations = N`` (with ``size_per_iteration``, ``stop_when_no_gain``): N rounds of
generate, train, evaluate; see :mod:`experiment.stages`.

With ``[[targets]]``, training and evaluation run per target (``adapters/<target>/<method>``,
``results/<target>/``) and the report draws one panel per target (paper Figs. 2-4); without
it, the one target is ``[training] model`` and the folders are ``adapters/<method>`` and
``results/`` as before.

Relative paths in the config are relative to the working directory, as on the command line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from evaluation.data import PromptSet
from graph.graph import METHODS
from tools.files import TextFileError, read_text


class ConfigError(ValueError):
    """The experiment config is not valid."""


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
    """K: prompts asked for per weakness (per batch for Self-Instruct)."""
    weaknesses_per_round: int = 1
    """W: weaknesses per round, generated side by side (both methods get W x K a round)."""
    overlap_responses: bool = False
    """Answer each round's prompts in the background while the next rounds run (the same
    data; ``graph.context.Context.overlap_responses``)."""
    summary_update: str = "rewrite"
    """``rewrite`` (the paper's summarizer) or ``delta`` (only the changed lines, merged by
    the rule check; ``graph.context.Context.summary_update``)."""
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
    judge: str | None = None
    """Prompt judge of both methods' runs (``llamaguard3`` or ``llm``; None: none)."""
    judge_url: str | None = None
    judge_model: str | None = None
    taxonomy: str | None = None
    """Taxonomy file of the judge and the coverage (default: Llama Guard 3's S1-S14)."""
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
        for name in ("rounds", "target_size", "prompts_per_round", "weaknesses_per_round",
                     "examples_per_request", "max_concurrency"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"[generation] {name}: got {value!r}; must be an integer >= 1")
        judge = self.judge or self.context.get("judge")
        if judge == "llamaguard3" and self.judge_url is None and self.judge_model is None:
            raise ConfigError("[generation] judge = llamaguard3 needs judge_model (Llama Guard "
                              "3, served by an embedded server of its own) or judge_url; "
                              "without them the judge would be the generation model")
        from graph.context import SUMMARY_UPDATES, Context

        if self.summary_update not in SUMMARY_UPDATES:
            raise ConfigError(f"[generation] summary_update: got {self.summary_update!r}; "
                              f"must be one of {', '.join(SUMMARY_UPDATES)}")
        if self.summary_update == "delta" and self.context.get("rule_check") is False:
            raise ConfigError("[generation] summary_update = delta needs the rule check (it "
                              "merges the changed lines into the summary): drop rule_check = "
                              "false from [generation.context], or use rewrite")
        known = {f.name for f in fields(Context)} - {"data_path"}
        unknown = sorted(set(self.context) - known)
        if unknown:
            raise ConfigError(f"[generation.context]: unknown Context field(s) {unknown}")
        named = sorted(set(self.context) & OWN_KEYS)
        if named:  # the section's own key would win over it without a word
            raise ConfigError(f"[generation.context]: {', '.join(named)} belong(s) in "
                              "[generation] itself (or, for seed, at the top of the config)")


OWN_KEYS = frozenset({
    "rounds", "target_size", "prompts_per_round", "weaknesses_per_round", "overlap_responses",
    "summary_update", "examples_per_request", "seed", "api_key_env", "max_concurrency",
    "seed_prompts_file", "seed_categories_file", "decontaminate",
})
"""Context fields the experiment sets from ``[generation]``'s own keys (or the config's top):
refused in ``[generation.context]``, where they would be overridden."""


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
    safety_sets: list[Any] = field(default_factory=list)
    """``[[evaluation.safety_sets]]``: more harmful prompt sets (:class:`EvalSetConfig`)."""
    overrefusal_sets: list[Any] = field(default_factory=list)
    """``[[evaluation.overrefusal_sets]]``: more benign prompt sets (:class:`EvalSetConfig`)."""

    def __post_init__(self) -> None:
        if self.prompt_format not in ("auto", "chat", "plain"):
            raise ConfigError("[evaluation] prompt_format must be auto, chat or plain")
        if self.mmlu_method not in ("loglik", "generate"):
            raise ConfigError("[evaluation] mmlu_method must be loglik or generate")
        for key in ("safety_sets", "overrefusal_sets"):
            entries = getattr(self, key)
            if not isinstance(entries, list) or not all(
                    isinstance(e, dict | EvalSetConfig) for e in entries):
                raise ConfigError(f"[evaluation] {key} must be a list of tables "
                                  f"([[evaluation.{key}]] in TOML)")
            setattr(self, key, [e if isinstance(e, EvalSetConfig)
                                else _take(EvalSetConfig, e, f"evaluation.{key}")
                                for e in entries])
        if not (self.catqa or self.beavertails or self.overrefusal or self.mmlu
                or self.safety_sets or self.overrefusal_sets):
            raise ConfigError("[evaluation] names no data set (catqa, beavertails, mmlu, "
                              "safety_sets, ...)")
        for kind in ("safety", "overrefusal"):
            names = [s.name for s in self.sets() if s.kind == kind]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ConfigError(f"[evaluation]: the {kind} set name(s) {twice} name more "
                                  "than one data set; give each set a distinct name")

    def sets(self) -> list[EvalSet]:
        """Every safety and over-refusal set, each under its own name: CatQA, BeaverTails,
        ``overrefusal``, then the ``safety_sets`` and ``overrefusal_sets``."""
        from evaluation.data import (
            beavertails_set,
            catqa_set,
            dataset_name,
            prompt_set,
        )

        out: list[EvalSet] = []
        if self.catqa:
            source = self.catqa
            out.append(EvalSet("safety", "catqa", self.catqa_limit, source,
                               lambda: catqa_set(source)))
        if self.beavertails:
            bt = self.beavertails
            out.append(EvalSet("safety", "beavertails", self.beavertails_limit, bt,
                               lambda: beavertails_set(bt)))
        if self.overrefusal:
            benign = self.overrefusal
            name = self.overrefusal_name
            out.append(EvalSet("overrefusal", name, self.overrefusal_limit, benign,
                               lambda: prompt_set(benign, name=name)))
        kinds: tuple[tuple[Literal["safety", "overrefusal"], list[Any]], ...] = (
            ("safety", self.safety_sets), ("overrefusal", self.overrefusal_sets))
        for kind, entries in kinds:
            for e in entries:
                name = e.name or dataset_name(e.data, e.where)

                def load(e: EvalSetConfig = e, name: str = name) -> PromptSet:
                    return prompt_set(e.data, name=name, prompt_column=e.prompt_column,
                                      category_column=e.category_column, where=e.where)

                out.append(EvalSet(kind, name, e.limit, e.data, load))
        return out


@dataclass
class EvalSetConfig:
    """One prompt set in the form ``data-advisor eval safety --data`` takes: a file (CSV, JSONL,
    JSON, Parquet, TXT) or ``hf:<id>[:<split>]``, its prompt and category columns, a row
    selection (``COL=VALUE`` / ``COL!=VALUE``) and a limit; reported under ``name`` (default:
    the file's stem plus the selection)."""

    data: str = ""
    name: str | None = None
    prompt_column: str | None = None
    category_column: str | None = None
    where: list[str] = field(default_factory=list)
    limit: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data:
            raise ConfigError("[[evaluation.*_sets]]: data (a file or hf:<id>) is required")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ConfigError(f"[[evaluation.*_sets]] {self.data}: limit must be an integer "
                              ">= 1")


@dataclass(frozen=True)
class EvalSet:
    """A safety or over-refusal set of the experiment, resolved: its kind, name, limit,
    source, and how to load its questions."""

    kind: Literal["safety", "overrefusal"]
    name: str
    limit: int | None
    source: str
    load: Callable[[], PromptSet]
    """Reads the set (:class:`evaluation.data.PromptSet`: name, questions, how it was read)."""


@dataclass
class TargetConfig:
    """One ``[[targets]]`` entry: a model to train and evaluate on both data sets."""

    model: str | None = None
    """HF id or path (default: the embedded SmolLM2-135M-Instruct)."""
    name: str | None = None
    """Folder and report name (default: the model's last path part, made file-safe)."""
    prompt_format: str | None = None
    """auto/chat/plain (default: ``[evaluation] prompt_format``)."""
    adapter_serving: str = "auto"
    """How the embedded server serves its adapters: auto (LoRA where vLLM supports it for the
    architecture, else merged), lora or merged (:mod:`tools.adapter_serving`)."""
    training: dict[str, Any] = field(default_factory=dict)
    """Overrides of ``[training]`` for this target (LoRA fields, ratio, val_fraction, ...)."""

    def __post_init__(self) -> None:
        from tools.adapter_serving import SERVING_CHOICES

        if self.prompt_format not in (None, "auto", "chat", "plain"):
            raise ConfigError(f"[[targets]] {self.model}: prompt_format must be auto, chat or "
                              "plain")
        if self.adapter_serving not in SERVING_CHOICES:
            raise ConfigError(f"[[targets]] {self.model}: adapter_serving must be one of "
                              f"{', '.join(SERVING_CHOICES)}")
        if self.name is None:
            from tools.default_model import DEFAULT_MODEL_NAME, is_default_model

            stem = DEFAULT_MODEL_NAME if is_default_model(self.model) else (
                str(self.model).rstrip("/").rsplit("/", 1)[-1])
            self.name = _file_safe(stem)
        elif not self.name or _file_safe(self.name) != self.name:
            raise ConfigError(f"[[targets]] name {self.name!r}: use letters, digits, '.', '-' "
                              "and '_' only (it names folders)")


def _file_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text).strip("-.") or "target"


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
    targets: list[TargetConfig] = field(default_factory=list)
    """The ``[[targets]]`` list; empty: the one target of ``[training] model``."""
    iterations: int = 1
    """Generate, train, evaluate this many times; iteration i + 1 is steered by the failures of
    iteration i's adapters on the steering half of the safety sets (1: no steering)."""
    size_per_iteration: int | None = None
    """Prompts each iteration adds per method (default: ``[generation] target_size``)."""
    stop_when_no_gain: bool = False
    """End the iterations early when no method's harmful rate on the steering half fell."""
    out_dir: str | None = None
    seed: int = 0
    name: str = "experiment"
    raw: dict[str, Any] = field(default_factory=dict)
    decontaminate: list[str] | None = None
    """Evaluation files the generated prompts and the training mix are checked against
    (``tools.decontam``); None: the ``[evaluation]`` sets, read with the evaluation loaders;
    ``[]``: no check."""

    @property
    def methods(self) -> list[str]:
        """The generation methods compared."""
        return list(self.generation.methods)

    def training_of(self, target: TargetConfig) -> TrainingConfig:
        """``[training]`` with the target's model and overrides."""
        own = {f.name for f in fields(TrainingConfig)} - {"lora", "instructions", "model"}
        values = dict(target.training)
        mix = {k: values.pop(k) for k in list(values) if k in own}
        return TrainingConfig(instructions=self.training.instructions, model=target.model,
                              **{**{k: getattr(self.training, k) for k in own}, **mix},
                              lora={**self.training.lora, **values})


def _read(path: Path) -> str:
    """The config file's text; a :class:`ConfigError` naming the byte and line if it is not
    UTF-8 (:func:`tools.files.read_text`)."""
    try:
        return read_text(path)
    except TextFileError as exc:
        raise ConfigError(str(exc)) from None


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
        data = yaml.safe_load(_read(path)) or {}
    else:
        import tomllib

        try:
            data = tomllib.loads(_read(path))
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
    top = {"generation", "training", "evaluation", "diversity", "targets", "out_dir", "seed",
           "name", "decontaminate", "iterations", "size_per_iteration", "stop_when_no_gain"}
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
    decontaminate = data.get("decontaminate")
    if decontaminate is not None and not (
        isinstance(decontaminate, list) and all(isinstance(p, str) for p in decontaminate)
    ):
        raise ConfigError("decontaminate: must be a list of evaluation files (or [] for none)")
    train_cfg.train_config(seed)  # validate the LoRA fields now, not after generation
    targets = _targets(data.get("targets"), train_cfg)
    evaluation = _take(EvaluationConfig, data.get("evaluation") or {}, "evaluation")
    if len(targets) > 1 and evaluation.base_url:
        raise ConfigError("[evaluation] base_url serves one target model; with several "
                          "[[targets]] leave it out (each target gets an embedded vLLM server) "
                          "or run one experiment per target")
    cfg = ExperimentConfig(
        generation=_take(GenerationConfig, data.get("generation") or {}, "generation"),
        training=train_cfg,
        evaluation=evaluation,
        diversity=_take(DiversityConfig, data.get("diversity") or {}, "diversity"),
        targets=targets,
        out_dir=data.get("out_dir"),
        seed=seed,
        name=str(data.get("name") or name),
        raw=data,
        decontaminate=decontaminate,
        **_iterations(data, evaluation),
    )
    for target in targets:  # validate each target's training now, not after generation
        cfg.training_of(target).train_config(seed)
    return cfg


def _iterations(data: Mapping[str, Any], evaluation: EvaluationConfig) -> dict[str, Any]:
    """``iterations``, ``size_per_iteration`` and ``stop_when_no_gain``, checked."""
    iterations = data.get("iterations", 1)
    size = data.get("size_per_iteration")
    stop = data.get("stop_when_no_gain", False)
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ConfigError(f"iterations: got {iterations!r}; must be an integer >= 1")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ConfigError(f"size_per_iteration: got {size!r}; must be an integer >= 1")
    if not isinstance(stop, bool):
        raise ConfigError("stop_when_no_gain must be true or false")
    if iterations > 1:
        if not any(s.kind == "safety" for s in evaluation.sets()):
            raise ConfigError("iterations > 1 steer by the safety sets' failures: name at least "
                              "one safety set in [evaluation]")
        generation = data.get("generation") or {}
        if size is None and not generation.get("target_size", 100):
            raise ConfigError("iterations > 1: give size_per_iteration (or [generation] "
                              "target_size), the prompts each iteration adds")
    return {"iterations": iterations, "size_per_iteration": size, "stop_when_no_gain": stop}


def _targets(value: Any, training: TrainingConfig) -> list[TargetConfig]:
    """The ``[[targets]]`` list, checked: names unique, no second way to name a model."""
    if value is None:
        return []
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        raise ConfigError("targets must be a non-empty list of tables ([[targets]] in TOML)")
    if training.model is not None:
        raise ConfigError("give the target models in [[targets]] or in [training] model, not "
                          "both (which one would be trained?)")
    targets = []
    for entry in value:
        extra = entry.get("training")
        if extra is not None and not isinstance(extra, dict):
            raise ConfigError(f"[[targets]] {entry.get('model')}: training must be a table")
        bad = sorted(set(extra or {}) & {"instructions", "model"})
        if bad:
            raise ConfigError(f"[[targets]] {entry.get('model')}: training cannot override "
                              f"{bad}; the instructions are the same for every target")
        targets.append(_take(TargetConfig, entry, "targets"))
    names = [t.name for t in targets]
    twice = sorted({n for n in names if names.count(n) > 1 and n is not None})
    if twice:
        raise ConfigError(f"[[targets]]: the name(s) {twice} name more than one target; give "
                          "each a distinct name")
    return targets

