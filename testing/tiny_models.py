"""Tiny randomly initialised models of the paper's architectures, saved like hub models.

The paper trains Mistral-7B-v0.1, Llama-2-7b and Falcon-7b (base models, no chat template) and
generates with Mistral-7B-Instruct and Llama-2-7b-chat. :func:`save_tiny` writes a model of one
of those architectures (``MistralForCausalLM``, ``LlamaForCausalLM``, ``FalconForCausalLM``)
with two layers of hidden size 128 (head size 64: vLLM's CPU attention has kernels for
a few head sizes only, not 16) and the given tokenizer into a folder vLLM's CPU
build, transformers and peft load like any local model; ``chat_template=False`` removes the
tokenizer's chat template, as a base model has none. The weights are random (seeded): what such
a model writes is noise, good for testing paths, never for judging quality.

The architecture's shape follows its 7B model where it matters to the code paths (Falcon-7b:
multi-query attention, parallel attention, no bias, no ALiBi; Mistral: grouped-query attention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARCHITECTURES = ("MistralForCausalLM", "LlamaForCausalLM", "FalconForCausalLM")


def _config(architecture: str, tokenizer: Any, **overrides: Any) -> Any:
    import transformers

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id, "vocab_size": len(tokenizer)}
    if architecture == "FalconForCausalLM":
        values: dict[str, Any] = {
            "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
            "multi_query": True, "parallel_attn": True, "new_decoder_architecture": False,
            "alibi": False, "bias": False, "max_position_embeddings": 4096}
        return transformers.FalconConfig(**(ids | values | overrides))
    values = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1,
              "max_position_embeddings": 4096}
    if architecture == "MistralForCausalLM":
        return transformers.MistralConfig(**(ids | values | {"sliding_window": None} | overrides))
    if architecture == "LlamaForCausalLM":
        return transformers.LlamaConfig(**(ids | values | overrides))
    raise ValueError(f"unknown architecture {architecture!r}; one of {', '.join(ARCHITECTURES)}")


def save_tiny(path: str | Path, architecture: str, tokenizer_source: str | Path, *,
              chat_template: bool = True, seed: int = 0, **overrides: Any) -> Path:
    """A tiny random ``architecture`` with the tokenizer of ``tokenizer_source`` in ``path``.

    ``chat_template=False``: the saved tokenizer has no chat template (a base model).
    ``overrides``: config fields (``hidden_size``, ``num_hidden_layers``, ...).
    """
    import torch
    import transformers

    path = Path(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_source))
    if not chat_template:
        tokenizer.chat_template = None
    config = _config(architecture, tokenizer, **overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if not chat_template:  # some tokenizers keep a template file beside the config
        (path / "chat_template.jinja").unlink(missing_ok=True)
    return path
