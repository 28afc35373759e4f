"""LoRA (or QLoRA) fine-tuning of a target model on a training mix, with resumable checkpoints.

:func:`train_lora` tokenizes the mix (:mod:`training.format`: loss on response tokens only),
wraps the model with a PEFT LoRA adapter and trains it with the transformers ``Trainer``. The
defaults of :class:`TrainConfig` are the paper's (arXiv 2410.05269): rank 32, alpha 16, dropout
0.1 on all linear layers, learning rate 2e-5, effective batch 32, one epoch, 512 tokens.

``out_dir`` receives

- ``checkpoint-<step>/``: full Trainer checkpoints (adapter, optimizer, scheduler, RNG, state)
  every ``save_steps`` and at the end; with ``resume=True`` a later call continues from the last;
- ``adapter/``: the final adapter (``adapter_model.safetensors``, ``adapter_config.json``) and the
  tokenizer, loadable with ``PeftModel.from_pretrained(base, out_dir / "adapter")``, and
  ``prompt_format.json``: the prompt format it was trained with (``tools.prompt_format``);
- ``train_config.json``: the :class:`TrainConfig` and what the run resolved (model, bf16, sizes);
- ``loss_history.json``: ``{"train": [{"step", "loss"}], "eval": [{"step", "loss"}]}``;
- ``loss.png``: train loss per step and validation loss.

QLoRA (``load_in_4bit=True``) needs a CUDA GPU and ``bitsandbytes``. bf16 is used by default
where the GPU supports it; on CPU training runs in float32.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from tools.files import write_json
from tools.prompt_format import FORMAT_FILE, format_record
from training.format import Features, PadCollator, pad_token_id, tokenize_examples

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainConfig:
    """Hyperparameters of a LoRA run (defaults: the paper's)."""

    rank: int = 32
    alpha: int = 16
    dropout: float = 0.1
    target_modules: str | list[str] = "all-linear"
    learning_rate: float = 2e-5
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 8
    epochs: float = 1.0
    max_steps: int = -1
    """Stop after this many optimizer steps (overrides ``epochs`` when > 0)."""
    max_length: int = 512
    seed: int = 0
    load_in_4bit: bool = False
    """QLoRA: load the base model in 4-bit NF4 with bitsandbytes (CUDA GPU only)."""
    bf16: bool | None = None
    """None: bf16 where the CUDA GPU supports it, float32 otherwise."""
    gradient_checkpointing: bool = False
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    save_steps: int = 50
    save_total_limit: int | None = 2
    eval_steps: int | None = None
    """Evaluate every this many steps (None: every ``save_steps``) and at the end."""
    logging_steps: int = 1
    eval_batch_size: int | None = None
    """None: ``per_device_batch_size``."""
    extra: dict[str, Any] = field(default_factory=dict)
    """More ``TrainingArguments`` fields, passed through as they are."""

    def __post_init__(self) -> None:
        for name in ("rank", "per_device_batch_size", "gradient_accumulation_steps",
                     "max_length", "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TrainConfig.dropout must be within [0, 1), got {self.dropout}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("TrainConfig needs epochs > 0 or max_steps > 0")

    @property
    def effective_batch_size(self) -> int:
        """Examples per optimizer step (one device)."""
        return self.per_device_batch_size * self.gradient_accumulation_steps

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-able values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A configuration from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {sorted(unknown)}")
        return cls(**values)


@dataclass
class TrainResult:
    """What a :func:`train_lora` call produced."""

    out_dir: Path
    adapter_dir: Path
    config_path: Path
    history_path: Path
    plot_path: Path | None
    global_step: int
    start_step: int
    """The step training started from (0, or the resumed checkpoint's step)."""
    resumed_from: Path | None
    train_loss: float | None
    """The last logged training loss."""
    eval_loss: float | None
    """The last validation loss (None without validation data)."""
    train_examples: int
    validation_examples: int
    tokens_seen: int
    """Non-padding tokens trained on in this call (resumed steps not included)."""
    train_runtime_s: float
    history: dict[str, list[dict[str, float]]]


class _ListDataset(torch.utils.data.Dataset[Features]):
    def __init__(self, items: list[Features]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Features:
        return self.items[i]


def checkpoints(out_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders of a run, by step."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir()
             if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """The last complete checkpoint (with ``trainer_state.json``), or None."""
    done = [p for p in checkpoints(out_dir) if (p / "trainer_state.json").exists()]
    return done[-1] if done else None


def adapter_done(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a finished :func:`train_lora` run (adapter and config)."""
    out = Path(out_dir)
    adapter = out / "adapter"
    return ((out / "train_config.json").is_file() and (adapter / "adapter_config.json").is_file()
            and any(adapter.glob("adapter_model.*")))


def _use_bf16(config: TrainConfig, cuda: bool) -> bool:
    if config.bf16 is not None:
        return config.bf16
    return cuda and torch.cuda.is_bf16_supported()


def _load_model(path: str, config: TrainConfig, cuda: bool, bf16: bool) -> Any:
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    if not config.load_in_4bit:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model.config.use_cache = False
        return model
    if not cuda:
        raise RuntimeError(
            "load_in_4bit (QLoRA) needs a CUDA GPU and bitsandbytes; no GPU is available here. "
            "Train with load_in_4bit=False (plain LoRA) on CPU."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("load_in_4bit (QLoRA) needs the bitsandbytes package: pip install "
                           "bitsandbytes")
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    # transformers leaves BitsAndBytesConfig.__init__ unannotated (a stub gap, not our call)
    quant = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, quantization_config=quant, device_map={"": torch.cuda.current_device()}
    )
    model.config.use_cache = False
    # peft leaves prepare_model_for_kbit_training unannotated (a stub gap, not our call)
    return prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
        model, use_gradient_checkpointing=False
    )


def loss_history(log_history: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Train and eval losses by step from a Trainer's ``state.log_history``."""
    train = [{"step": e["step"], "loss": e["loss"]} for e in log_history if "loss" in e]
    evals = [{"step": e["step"], "loss": e["eval_loss"]} for e in log_history if "eval_loss" in e]
    return {"train": train, "eval": evals}


def plot_loss(history: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> Path | None:
    """Save the train loss per step and the validation loss as a PNG (None without matplotlib)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        warnings.warn("matplotlib is not installed: no loss.png", stacklevel=2)
        return None
    fig = Figure(figsize=(7, 4))  # no pyplot: the Agg canvas, no global state
    ax = fig.add_subplot()
    if history["train"]:
        ax.plot([e["step"] for e in history["train"]], [e["loss"] for e in history["train"]],
                label="train", linewidth=1)
    if history["eval"]:
        ax.plot([e["step"] for e in history["eval"]], [e["loss"] for e in history["eval"]],
                "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("LoRA training loss")
    ax.grid(alpha=0.3)
    if history["train"] or history["eval"]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def train_lora(
    model_name_or_path: str | Path,
    train: Sequence[Mapping[str, str]],
    validation: Sequence[Mapping[str, str]],
    out_dir: str | Path,
    config: TrainConfig | None = None,
    resume: bool = True,
    *,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train a LoRA adapter on ``train`` ({"prompt", "response"} examples) into ``out_dir``.

    ``validation`` may be empty (no evaluation). With ``resume=True`` training continues from
    the last checkpoint in ``out_dir`` (a finished run is not trained again; a larger
    ``max_steps`` extends it); with ``resume=False`` existing checkpoints there are removed and
    training starts from scratch. ``callbacks`` are extra ``TrainerCallback`` objects.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Trainer, TrainingArguments, set_seed

    config = config or TrainConfig()
    if not train:
        raise ValueError("no training examples")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    bf16 = _use_bf16(config, cuda)
    path = str(model_name_or_path)

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    train_features = tokenize_examples(tokenizer, train, config.max_length)
    val_features = tokenize_examples(tokenizer, validation, config.max_length)

    set_seed(config.seed)  # LoRA A init
    model = _load_model(path, config, cuda, bf16)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)

    if not resume:
        for old in checkpoints(out):
            shutil.rmtree(old)
    resume_from = last_checkpoint(out) if resume else None
    start_step = 0
    if resume_from is not None:
        state = json.loads((resume_from / "trainer_state.json").read_text("utf-8"))
        start_step = int(state.get("global_step", 0))

    arguments: dict[str, Any] = dict(
        output_dir=str(out),
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.eval_batch_size or config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if val_features else "no",
        eval_steps=config.eval_steps or config.save_steps,
        bf16=bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not cuda,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
    )
    arguments.update(config.extra)
    args = TrainingArguments(**arguments)
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=PadCollator(pad_token_id(tokenizer), "right", 8 if cuda else None),
        train_dataset=_ListDataset(train_features),
        eval_dataset=_ListDataset(val_features) if val_features else None,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    adapter_dir = out / "adapter"
    trainer.save_model(str(adapter_dir))  # the adapter only; main process, FSDP-aware
    history = loss_history(trainer.state.log_history)
    config_path = out / "train_config.json"
    history_path = out / "loss_history.json"
    plot_path: Path | None = out / "loss.png"
    if trainer.is_world_process_zero():  # one writer when launched on several processes
        # the prompt format the adapter learnt, for its evaluation (before train_config.json)
        write_json(adapter_dir / FORMAT_FILE, format_record(tokenizer.chat_template))
        # atomic: adapter_done() takes train_config.json as the sign of a finished adapter
        write_json(config_path, {
            "config": config.to_dict(),
            "model": path,
            "bf16": bf16,
            "effective_batch_size": config.effective_batch_size,
            "train_examples": len(train_features),
            "validation_examples": len(val_features),
            "global_step": trainer.state.global_step,
        })
        write_json(history_path, history)
        plot_path = plot_loss(history, out / "loss.png")
    trainer.accelerator.wait_for_everyone()
    session_tokens = trainer.state.num_input_tokens_seen - getattr(
        trainer, "_initial_num_input_tokens_seen", 0)
    return TrainResult(
        out_dir=out,
        adapter_dir=adapter_dir,
        config_path=config_path,
        history_path=history_path,
        plot_path=plot_path,
        global_step=trainer.state.global_step,
        start_step=start_step,
        resumed_from=resume_from,
        train_loss=history["train"][-1]["loss"] if history["train"] else None,
        eval_loss=history["eval"][-1]["loss"] if history["eval"] else None,
        train_examples=len(train_features),
        validation_examples=len(val_features),
        tokens_seen=int(session_tokens),
        train_runtime_s=float(output.metrics.get("train_runtime", 0.0)),
        history=history,
    )
