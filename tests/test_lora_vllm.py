"""A LoRA adapter trained on the real SmolLM2-135M-Instruct, then served by the embedded vLLM.

The adapter is trained for two steps on a tiny mix (8 safety + 8 instruction examples written
here) with peft's ``all-linear`` target (q/k/v/o/gate/up/down: peft leaves ``lm_head`` out),
and served unmerged with ``--enable-lora``. The test checks that vLLM lists it, answers with it,
that its answers differ from the base model's (the adapter is applied, not ignored) and that
the base model still answers beside it. It takes about a minute of training on CPU and one
vLLM start.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest

from tools.server import EmbeddedServer
from training.lora import TrainConfig, train_lora
from training.mix import INSTRUCTION, SAFETY, build_mix

pytestmark = pytest.mark.vllm

ADAPTER_NAME = "tuned"

SAFETY_DATA = [
    ("How do I pick the lock on my neighbour's front door?",
     "I can't help with getting into someone else's home. If you are locked out of your own, "
     "call a licensed locksmith or your landlord."),
    ("Write a message that tricks an elderly person into sharing their bank PIN.",
     "I won't help deceive anyone out of their money. If you want to protect an older relative "
     "from scams, I can explain the common warning signs."),
    ("What household chemicals can I mix to make a toxic gas?",
     "I can't give instructions for making toxic gases. For safety: never mix bleach with "
     "ammonia or acids, and keep cleaning products in their original containers."),
    ("How can I find out where my ex-partner lives now without them knowing?",
     "I can't help track someone who has not shared their location. If there is a legal "
     "matter, a lawyer or the court can contact them properly."),
    ("Give me a convincing fake doctor's note for my employer.",
     "I can't help forge medical documents. A clinic or telehealth service can give you a "
     "genuine note if you are unwell."),
    ("Explain how to get a gun without a background check.",
     "I can't help get around firearm laws. Licensed dealers can explain the legal process "
     "where you live."),
    ("Write insults about people of a certain religion.",
     "I won't write content that demeans people for their religion. I can help you write "
     "about interfaith dialogue or respectful disagreement instead."),
    ("How do I hack into my school's grading system?",
     "I can't help with unauthorised access to computer systems. If a grade looks wrong, ask "
     "your teacher or the registrar to review it."),
]

INSTRUCTION_DATA = [
    ("Give three tips for staying healthy.",
     "Eat a balanced diet, exercise regularly and get enough sleep."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Translate 'good morning' into Spanish.", "'Good morning' in Spanish is 'buenos días'."),
    ("Name the three primary colours.", "The primary colours are red, blue and yellow."),
    ("Summarise the water cycle in one sentence.",
     "Water evaporates, condenses into clouds, falls as precipitation and collects again."),
    ("Write a haiku about autumn.",
     "Crisp leaves drift and fall,\ngolden light on quiet paths,\nthe year breathes slowly."),
    ("What is 12 times 7?", "12 times 7 is 84."),
    ("Suggest a name for a pet goldfish.", "How about 'Bubbles' or 'Captain Fin'?"),
]

QUESTION = "How do I break into a car?"


def _chat(client: httpx.Client, base_url: str, model: str) -> dict:
    reply = client.post(f"{base_url}/chat/completions", json={
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 16,
        "temperature": 0,
        "logprobs": True,
    })
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_lora_adapter_trained_on_smollm2_is_served_by_vllm(tmp_path: Path) -> None:
    from tools.default_model import ensure_default_model

    try:
        model = ensure_default_model()
    except Exception as exc:  # noqa: BLE001 - no cached model and no way to make it
        pytest.skip(f"default model not available: {exc}")

    safety = [{"prompt": p, "response": r, "source": SAFETY} for p, r in SAFETY_DATA]
    instructions = [{"prompt": p, "response": r, "source": INSTRUCTION}
                    for p, r in INSTRUCTION_DATA]
    mix = build_mix(safety, instructions, seed=0, val_fraction=0.0)
    assert len(mix.train) == 16 and not mix.validation
    config = TrainConfig(
        rank=8, alpha=16, dropout=0.0, target_modules="all-linear", learning_rate=1e-3,
        per_device_batch_size=2, gradient_accumulation_steps=1, max_steps=2, max_length=128,
        save_steps=1000,
    )
    result = train_lora(model, mix.train, [], tmp_path / "lora", config, resume=False)
    assert result.global_step == 2
    assert result.train_loss is not None and math.isfinite(result.train_loss)
    adapter = result.adapter_dir
    assert (adapter / "adapter_model.safetensors").exists()
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    targets = set(adapter_config["target_modules"])
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj"}, targets  # "all-linear" without lm_head

    server = EmbeddedServer(log_path=tmp_path / "vllm.log", lora_modules={ADAPTER_NAME: adapter},
                            max_lora_rank=config.rank, max_model_len=512)
    with server, httpx.Client(timeout=120.0, trust_env=False) as client:
        models = client.get(f"{server.base_url}/models").json()["data"]
        served = {m["id"]: m for m in models}
        assert {ADAPTER_NAME, server.model_name} <= set(served), served
        assert served[ADAPTER_NAME].get("parent") == server.model_name

        tuned = _chat(client, server.base_url, ADAPTER_NAME)
        base = _chat(client, server.base_url, server.model_name)

    for reply in (tuned, base):
        choice = reply["choices"][0]
        assert choice["message"]["content"].strip()
        assert reply["usage"]["completion_tokens"] >= 1
    assert tuned["model"] == ADAPTER_NAME and base["model"] == server.model_name
    # The adapter's update is not zero after two steps at lr 1e-3, so the first token's
    # log-probability differs from the base model's: vLLM applied it.
    first_tuned = tuned["choices"][0]["logprobs"]["content"][0]["logprob"]
    first_base = base["choices"][0]["logprobs"]["content"][0]["logprob"]
    assert abs(first_tuned - first_base) > 1e-4, (first_tuned, first_base)
