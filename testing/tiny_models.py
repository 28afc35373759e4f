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
:data:`SEVEN_B` holds the sizes of the 7B models themselves: ``model_config(arch, **SEVEN_B[arch])``
is a random model of the paper's size, for measuring speed and memory on a GPU
(``benchmarks/bench_gpu_decode.py``), and ``save_tiny(..., **SEVEN_B[arch], dtype=torch.bfloat16,
device="cuda")`` saves one (the saved vocabulary is always the tokenizer's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARCHITECTURES = ("MistralForCausalLM", "LlamaForCausalLM", "FalconForCausalLM")

SEVEN_B: dict[str, dict[str, Any]] = {
    # mistralai/Mistral-7B-v0.1 (grouped-query attention, 8 key/value heads)
    "MistralForCausalLM": {"hidden_size": 4096, "intermediate_size": 14336,
                           "num_hidden_layers": 32, "num_attention_heads": 32,
                           "num_key_value_heads": 8, "vocab_size": 32000},
    # meta-llama/Llama-2-7b-hf (multi-head attention: 32 key/value heads)
    "LlamaForCausalLM": {"hidden_size": 4096, "intermediate_size": 11008,
                         "num_hidden_layers": 32, "num_attention_heads": 32,
                         "num_key_value_heads": 32, "vocab_size": 32000},
    # tiiuae/falcon-7b (multi-query attention, 71 heads of 64)
    "FalconForCausalLM": {"hidden_size": 4544, "num_hidden_layers": 32,
                          "num_attention_heads": 71, "vocab_size": 65024},
}
"""The sizes of the paper's 7B models, as overrides of :func:`model_config`."""


def model_config(architecture: str, **overrides: Any) -> Any:
    """The config of a tiny ``architecture`` with ``overrides`` (e.g. ``**SEVEN_B[arch]``)."""
    import transformers

    if architecture == "FalconForCausalLM":
        values: dict[str, Any] = {
            "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
            "multi_query": True, "parallel_attn": True, "new_decoder_architecture": False,
            "alibi": False, "bias": False, "max_position_embeddings": 4096}
        return transformers.FalconConfig(**(values | overrides))
    values = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1,
              "max_position_embeddings": 4096}
    if architecture == "MistralForCausalLM":
        return transformers.MistralConfig(**(values | {"sliding_window": None} | overrides))
    if architecture == "LlamaForCausalLM":
        return transformers.LlamaConfig(**(values | overrides))
    raise ValueError(f"unknown architecture {architecture!r}; one of {', '.join(ARCHITECTURES)}")


def save_tiny(path: str | Path, architecture: str, tokenizer_source: str | Path, *,
              chat_template: bool = True, seed: int = 0, dtype: Any = None,
              device: str = "cpu", **overrides: Any) -> Path:
    """A tiny random ``architecture`` with the tokenizer of ``tokenizer_source`` in ``path``.

    ``chat_template=False``: the saved tokenizer has no chat template (a base model).
    ``overrides``: config fields (``hidden_size``, ``num_hidden_layers``, ...); the vocabulary
    and the special token ids are always the tokenizer's. ``dtype`` and ``device``: where the
    random weights are made and in what type (a 7B model: ``torch.bfloat16`` on ``"cuda"``).
    """
    import torch
    import transformers

    path = Path(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_source))
    if not chat_template:
        tokenizer.chat_template = None
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id, "vocab_size": len(tokenizer)}
    config = model_config(architecture, **(overrides | ids))
    torch.manual_seed(seed)
    auto: Any = transformers.AutoModelForCausalLM  # untyped in transformers
    with torch.device(device):
        model = auto.from_config(config, dtype=dtype)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if not chat_template:  # some tokenizers keep a template file beside the config
        (path / "chat_template.jinja").unlink(missing_ok=True)
    return path
