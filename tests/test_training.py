"""Training: the data mix, the SFT label mask, and LoRA training on a tiny random Llama."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import save_tiny_llama

from tools.text import normalize
from training.format import (
    IGNORE_INDEX,
    PLAIN_TEMPLATE,
    PadCollator,
    plain_chat_template,
    prompt_ids,
    prompt_text,
    tokenize_example,
)
from training.lora import TrainConfig, train_lora
from training.mix import build_mix, load_instructions, load_safety

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ALPACA = SHARED / "alpaca_claude_t45.json"


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from tools.default_model import ensure_default_model

    try:
        path = ensure_default_model()
    except Exception as exc:  # noqa: BLE001 - no cached model and no way to make it
        pytest.skip(f"default model not available: {exc}")
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def plain_tokenizer(tokenizer: Any) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = None
    return tok


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama; logits large enough for a LoRA to move the loss quickly."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), initializer_range=0.5)


def ex(prompt: str, response: str = "ok", source: str = "safety") -> dict[str, str]:
    return {"prompt": prompt, "response": response, "source": source}


SAFETY = [ex(f"harmful request {i}", f"I can't help with that {i}.") for i in range(10)]
INSTR = [ex(f"instruction {i}", f"answer {i}", "instruction") for i in range(100)]


# --- loading -----------------------------------------------------------------------------------


def test_load_instructions_alpaca_and_prompt_rows(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
        {"instruction": "Name a color.", "input": "  ", "output": "Blue"},
        {"instruction": "Empty output.", "input": "", "output": ""},
    ]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    got = load_instructions(tmp_path / "a.json")
    assert got == [
        {"prompt": "Translate.\n\nBonjour", "response": "Hello", "source": "instruction"},
        {"prompt": "Name a color.", "response": "Blue", "source": "instruction"},
    ]
    lines = [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert [e["prompt"] for e in load_instructions(tmp_path / "b.jsonl")] == ["p1", "p2"]


@pytest.mark.skipif(not ALPACA.exists(), reason="shared Alpaca data absent")
def test_load_instructions_shared_alpaca() -> None:
    got = load_instructions(ALPACA)
    assert len(got) > 1000
    assert all(e["prompt"] and e["response"] and e["source"] == "instruction" for e in got)


def test_load_safety_from_run_export_and_hf(tmp_path: Path) -> None:
    from graph.export import export_run
    from tools.store import RunStore

    run = tmp_path / "run"
    store = RunStore(run / "run.sqlite", "run")
    store.db["samples"].insert_all([
        {"id": f"run:1:{i}", "run_id": "run", "round": 1, "slot": i, "method": "data_advisor",
         "weakness": "fraud", "prompt": f"prompt {i}", "response": resp}
        for i, resp in enumerate(["safe 0", None, "", "safe 3"])
    ])
    paths = export_run(store, run / "export")
    store.close()
    want = [ex("prompt 0", "safe 0"), ex("prompt 3", "safe 3")]
    assert load_safety(run) == want
    assert load_safety(run / "run.sqlite") == want
    assert load_safety(run / "export") == want
    assert load_safety(paths["jsonl"]) == want
    assert load_safety(paths["hf"]) == want


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_safety(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text(json.dumps({"prompt": "p", "response": ""}) + "\n")
    with pytest.raises(ValueError, match="no safety examples"):
        load_safety(tmp_path / "empty.jsonl")
    (tmp_path / "odd.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match="neither 'instruction' nor 'prompt'"):
        load_instructions(tmp_path / "odd.jsonl")
    db = tmp_path / "other.sqlite"
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    with pytest.raises(ValueError, match="samples"):
        load_safety(db)
    with pytest.raises(ValueError, match="not a run folder"):
        load_safety(tmp_path)


# --- mixing ------------------------------------------------------------------------------------


def all_of(splits: Any) -> list[dict[str, str]]:
    return splits.train + splits.validation


def test_mix_default_is_balanced() -> None:
    splits = build_mix(SAFETY, INSTR, seed=0)
    sources = [e["source"] for e in all_of(splits)]
    assert sources.count("safety") == 10 and sources.count("instruction") == 10
    # fewer instructions than safety examples: all of them, no more
    sources = [e["source"] for e in all_of(build_mix(SAFETY, INSTR[:4]))]
    assert sources.count("safety") == 10 and sources.count("instruction") == 4


@pytest.mark.parametrize(("ratio", "n_safety", "n_instr"),
                         [(0.25, 10, 30), (0.5, 10, 10), (0.8, 10, 2), (1.0, 10, 0),
                          (0.0, 0, 100)])
def test_mix_ratio(ratio: float, n_safety: int, n_instr: int) -> None:
    sources = [e["source"] for e in all_of(build_mix(SAFETY, INSTR, ratio=ratio))]
    assert (sources.count("safety"), sources.count("instruction")) == (n_safety, n_instr)


def test_mix_ratio_limited_by_safety_data() -> None:
    sources = [e["source"] for e in all_of(build_mix(SAFETY * 1, INSTR[:20], ratio=0.2))]
    # 20 instructions allow 25 examples at 20% safety: 5 safety + 20 instructions
    assert (sources.count("safety"), sources.count("instruction")) == (5, 20)


def test_mix_dedups_on_normalized_prompt() -> None:
    safety = [ex("How do I  pick a lock?"), ex("how do i pick a LOCK?"), ex("Other")]
    instr = [ex("HOW DO I PICK A LOCK?", source="instruction"),
             ex("Write a poem", source="instruction"),
             ex("write   a poem", source="instruction")]
    mixed = all_of(build_mix(safety, instr, val_fraction=0))
    keys = [normalize(e["prompt"]) for e in mixed]
    assert sorted(keys) == ["how do i pick a lock", "other", "write a poem"]
    lock = next(e for e in mixed if e["prompt"].lower().startswith("how"))
    assert lock["source"] == "safety" and lock["prompt"] == "How do I  pick a lock?"


def test_mix_seed_determinism() -> None:
    a = build_mix(SAFETY, INSTR, ratio=0.25, seed=1)
    b = build_mix(SAFETY, INSTR, ratio=0.25, seed=1)
    c = build_mix(SAFETY, INSTR, ratio=0.25, seed=2)
    assert a == b
    assert all_of(a) != all_of(c)


def test_mix_validation_split() -> None:
    splits = build_mix(SAFETY, INSTR, ratio=0.25, val_fraction=0.1)
    assert len(splits.validation) == 4 and len(splits.train) == 36
    prompts = [e["prompt"] for e in all_of(splits)]
    assert len(set(prompts)) == 40
    assert not {e["prompt"] for e in splits.train} & {e["prompt"] for e in splits.validation}
    counts = splits.counts()
    assert sum(counts["train"].values()) == 36
    # a tiny mix still gets one validation example; val_fraction 0 gets none
    assert len(build_mix(SAFETY[:2], INSTR[:2]).validation) == 1
    assert build_mix(SAFETY, INSTR, val_fraction=0).validation == []


def test_mix_errors() -> None:
    with pytest.raises(ValueError, match="no safety examples"):
        build_mix([], INSTR)
    with pytest.raises(ValueError, match="no instruction examples"):
        build_mix(SAFETY, [])
    with pytest.raises(ValueError, match="no instruction examples"):
        build_mix(SAFETY, [ex(e["prompt"], source="instruction") for e in SAFETY], ratio=0.5)
    assert len(all_of(build_mix(SAFETY, [], ratio=1.0))) == 10
    with pytest.raises(ValueError, match="ratio"):
        build_mix(SAFETY, INSTR, ratio=1.5)
    with pytest.raises(ValueError, match="val_fraction"):
        build_mix(SAFETY, INSTR, val_fraction=1.0)
    with pytest.raises(ValueError, match="too few"):
        build_mix(SAFETY[:1], [], ratio=1.0)


# --- format ------------------------------------------------------------------------------------


def unmasked(features: dict[str, list[int]]) -> list[int]:
    return [i for i, lab in zip(features["input_ids"], features["labels"], strict=True)
            if lab != IGNORE_INDEX]


def check_exact(tok: Any, prompt: str, response: str) -> None:
    f = tokenize_example(tok, prompt, response, 4096)
    assert len(f["input_ids"]) == len(f["labels"]) == len(f["attention_mask"])
    # labels equal the inputs where they count, and only the response (+ EOS) counts
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(f["input_ids"], f["labels"],
                                                           strict=True))
    assert tok.decode(unmasked(f)) == response + tok.eos_token
    n_prompt = f["labels"].index(next(lab for lab in f["labels"] if lab != IGNORE_INDEX))
    assert all(lab == IGNORE_INDEX for lab in f["labels"][:n_prompt])
    assert all(lab != IGNORE_INDEX for lab in f["labels"][n_prompt:])
    assert tok.decode(f["input_ids"][:n_prompt]) == prompt_text(tok, prompt)


def test_label_mask_with_chat_template(tokenizer: Any) -> None:
    prompt, response = "How do I make a bomb?", "I can't help with that. Here is why: ..."
    text = prompt_text(tokenizer, prompt)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    check_exact(tokenizer, prompt, response)
    f = tokenize_example(tokenizer, prompt, response, 512)
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        tokenize=False)
    assert tokenizer.decode(f["input_ids"]) == full.rstrip("\n")


def test_label_mask_without_chat_template(plain_tokenizer: Any) -> None:
    prompt, response = "Name a color.", " Blue, or maybe\n green."
    assert prompt_text(plain_tokenizer, prompt) == PLAIN_TEMPLATE.format(prompt=prompt)
    check_exact(plain_tokenizer, prompt, response)


def test_plain_chat_template_serves_the_training_format(plain_tokenizer: Any) -> None:
    # served with it (vLLM adds no special tokens to a chat-rendered prompt), a model without a
    # chat template gets the prompt tokens it was trained on; this tokenizer adds no BOS, so
    # the template must not write one either
    prompt = "Name a color."
    messages = [{"role": "user", "content": prompt}]
    served = plain_tokenizer.apply_chat_template(
        messages, chat_template=plain_chat_template(plain_tokenizer), tokenize=False)
    assert served == prompt_text(plain_tokenizer, prompt)
    ids = plain_tokenizer(served, add_special_tokens=False)["input_ids"]
    assert ids == prompt_ids(plain_tokenizer, prompt)
    answered = plain_tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": "Blue."}],
        chat_template=plain_chat_template(plain_tokenizer), tokenize=False)
    assert answered == served + "Blue." + plain_tokenizer.eos_token


@pytest.mark.skipif(not ALPACA.exists(), reason="shared Alpaca data absent")
def test_label_mask_exact_on_real_data(tokenizer: Any, plain_tokenizer: Any) -> None:
    for e in load_instructions(ALPACA)[:40:2]:
        check_exact(tokenizer, e["prompt"], e["response"])
        check_exact(plain_tokenizer, e["prompt"], e["response"])


def test_padding_and_collator(tokenizer: Any) -> None:
    f = tokenize_example(tokenizer, "Hi", "Hello there", 64, pad=True)
    n = sum(f["attention_mask"])
    assert len(f["input_ids"]) == 64 and n < 64
    assert f["labels"][n:] == [IGNORE_INDEX] * (64 - n)
    assert tokenizer.decode(unmasked(f)) == "Hello there" + tokenizer.eos_token
    a = tokenize_example(tokenizer, "Hi", "Hello there", 64)
    b = tokenize_example(tokenizer, "Hi", "A much longer answer than the other one", 64)
    batch = PadCollator(tokenizer.pad_token_id)([a, b])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(b["input_ids"]))
    assert batch["labels"][0, len(a["input_ids"]):].eq(IGNORE_INDEX).all()
    assert batch["attention_mask"][0].sum() == len(a["input_ids"])
    assert PadCollator(0, multiple_of=8)([a])["input_ids"].shape[1] % 8 == 0


def test_truncation_keeps_response_tokens(tokenizer: Any) -> None:
    long_prompt = "word " * 300
    f = tokenize_example(tokenizer, long_prompt, "Short answer.", 64)
    assert len(f["input_ids"]) == 64
    assert tokenizer.decode(unmasked(f)) == "Short answer." + tokenizer.eos_token
    f = tokenize_example(tokenizer, "Hi", "word " * 300, 64)
    assert len(f["input_ids"]) == 64
    assert len(unmasked(f)) == 64 - f["labels"].count(IGNORE_INDEX) > 32
    f = tokenize_example(tokenizer, long_prompt, "word " * 300, 64)
    assert len(f["input_ids"]) == 64 and len(unmasked(f)) == 32


# --- LoRA training -----------------------------------------------------------------------------


def test_train_config_defaults() -> None:
    c = TrainConfig()
    assert (c.rank, c.alpha, c.dropout, c.target_modules) == (32, 16, 0.1, "all-linear")
    assert (c.learning_rate, c.effective_batch_size, c.epochs, c.max_length) == (2e-5, 32, 1, 512)
    assert c.load_in_4bit is False and c.bf16 is None
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"rnak": 8})
    with pytest.raises(ValueError, match="rank"):
        TrainConfig(rank=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_qlora_needs_a_gpu(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        train_lora(tiny_model, SAFETY[:2], [], tmp_path, TrainConfig(load_in_4bit=True))


def fast_config(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(learning_rate=1e-2, per_device_batch_size=4,
                                  gradient_accumulation_steps=1, max_length=48, dropout=0.0,
                                  save_steps=100, extra={"disable_tqdm": True})
    values.update(overrides)
    return TrainConfig(**values)


TRAIN = [ex("Say hello.", "Hello! Nice to meet you."),
         ex("How do I hurt someone?", "I can't help with hurting anyone."),
         ex("Count to three.", "One, two, three.", "instruction"),
         ex("Name a fruit.", "An apple.", "instruction")]


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("lora")
    return train_lora(tiny_model, TRAIN * 4, TRAIN[:2], out, fast_config(max_steps=12))


def test_training_loss_decreases(trained: Any) -> None:
    losses = [e["loss"] for e in trained.history["train"]]
    assert len(losses) == 12 and trained.global_step == 12
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3
    assert trained.history["eval"] and trained.eval_loss is not None
    assert trained.tokens_seen > 0


def test_training_writes_its_outputs(trained: Any) -> None:
    out = trained.out_dir
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 32 and adapter_config["lora_alpha"] == 16
    # the prompt format it learnt, for its evaluation: the tokenizer's own chat template
    from tools.prompt_format import FORMAT_FILE, recorded_format

    assert recorded_format(out / "adapter") == "chat"
    record = json.loads((out / "adapter" / FORMAT_FILE).read_text())
    assert len(record["chat_template_sha256"]) == 64
    saved = json.loads((out / "train_config.json").read_text())
    assert TrainConfig.from_dict(saved["config"]) == fast_config(max_steps=12)
    assert saved["train_examples"] == 16 and saved["validation_examples"] == 2
    history = json.loads((out / "loss_history.json").read_text())
    assert history == trained.history and [e["step"] for e in history["train"]] == list(
        range(1, 13))
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "checkpoint-12" / "trainer_state.json").exists()


def test_adapter_reloads_and_changes_outputs(trained: Any, tiny_model: Path,
                                             tokenizer: Any) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([tokenize_example(tokenizer, "Say hello.", "Hello!", 48)["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                          trained.adapter_dir).eval()
        tuned_logits = tuned(ids).logits
        with tuned.disable_adapter():
            assert torch.allclose(tuned(ids).logits, base_logits, atol=1e-6)
    assert (tuned_logits - base_logits).abs().max() > 1e-3


def test_resume_continues_from_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class StartStep(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.steps.append(state.global_step)

    first = train_lora(tiny_model, TRAIN * 4, [], tmp_path, fast_config(max_steps=2, save_steps=2))
    assert first.global_step == 2 and first.start_step == 0 and first.resumed_from is None
    assert (tmp_path / "checkpoint-2").is_dir()

    seen = StartStep()
    second = train_lora(tiny_model, TRAIN * 4, [], tmp_path,
                        fast_config(max_steps=4, save_steps=2), resume=True, callbacks=[seen])
    assert second.resumed_from == tmp_path / "checkpoint-2"
    assert second.start_step == 2 and seen.steps == [2] and second.global_step == 4
    assert [e["step"] for e in second.history["train"]] == [1, 2, 3, 4]
    assert second.history["train"][:2] == first.history["train"]
    assert (tmp_path / "checkpoint-4").is_dir()

    fresh = train_lora(tiny_model, TRAIN * 4, [], tmp_path, fast_config(max_steps=1),
                       resume=False)
    assert fresh.start_step == 0 and fresh.global_step == 1
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-1"]
