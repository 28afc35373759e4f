"""The random models the tests and GPU benchmarks build (:mod:`testing.tiny_models`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from conftest import save_tiny_model

from testing.tiny_models import SEVEN_B, model_config

# parameter counts of the released models (their model cards / safetensors indexes)
PUBLISHED = {"MistralForCausalLM": 7_241_732_096,   # mistralai/Mistral-7B-v0.1
             "LlamaForCausalLM": 6_738_415_616,     # meta-llama/Llama-2-7b-hf
             "FalconForCausalLM": 6_921_720_704}    # tiiuae/falcon-7b


@pytest.mark.parametrize("architecture", sorted(SEVEN_B))
def test_seven_b_shapes_are_the_released_models(architecture: str) -> None:
    """A benchmark of 'a 7B model' times a model of exactly the paper's size (meta tensors)."""
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            model_config(architecture, **SEVEN_B[architecture]))
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[architecture]


def test_saved_model_keeps_the_tokenizers_vocabulary(tmp_path: Path) -> None:
    """Overrides of a 7B shape set the sizes; the vocabulary and ids stay the tokenizer's."""
    shape = SEVEN_B["MistralForCausalLM"] | {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1}
    path = save_tiny_model(tmp_path / "m", "MistralForCausalLM", dtype=torch.bfloat16, **shape)
    config = json.loads((path / "config.json").read_text())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    assert config["vocab_size"] == len(tokenizer) != SEVEN_B["MistralForCausalLM"]["vocab_size"]
    assert config["eos_token_id"] == tokenizer.eos_token_id
    assert config["dtype"] == "bfloat16" and config["num_hidden_layers"] == 1
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    assert model.model.embed_tokens.weight.shape == (len(tokenizer), 64)
