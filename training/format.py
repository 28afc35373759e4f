"""Supervised fine-tuning format: prompt + response token ids, with the loss on the response only.

The prompt is rendered with the tokenizer's chat template when it has one (one user message,
``add_generation_prompt=True``), otherwise with the plain template
``"### User:\\n{prompt}\\n\\n### Assistant:\\n"`` (``tools.prompt_format``, the one evaluation
sends too). The response follows, then the EOS token.
Prompt and response are tokenized separately and concatenated, so the boundary is exact: the
labels are the input ids on the response tokens (and EOS) and ``-100`` on every prompt token and
on padding. :func:`plain_chat_template` is the plain template as a chat template, to serve a
model without one the way it was trained.

Too long examples are truncated to ``max_length``: the prompt keeps its end (the part next to
the response) and gives up tokens first, down to half of ``max_length`` when the response
needs the room; then the response is cut at its end (losing EOS).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from tools.prompt_format import PLAIN_TEMPLATE, plain_prompt

IGNORE_INDEX = -100

Features = dict[str, list[int]]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer: Any, prompt: str) -> str:
    """The prompt as the model sees it, up to where the response starts (use it to generate)."""
    if has_chat_template(tokenizer):
        text: str = tokenizer.apply_chat_template(  # tokenize=False: the text, not ids
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return text
    return plain_prompt(prompt)


def plain_chat_template(tokenizer: Any) -> str:
    """A Jinja chat template that renders the plain template (:data:`PLAIN_TEMPLATE`).

    For serving a target without a chat template of its own (vLLM's ``--chat-template``): its
    chat requests then get the prompt tokens :func:`prompt_ids` gave it in training: BOS only
    where ``tokenizer`` adds one (a server adds no special tokens to a chat-rendered prompt),
    the user turn in the plain template, an assistant turn followed by EOS.
    """
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and _ids(tokenizer, "", special=True)[:1] == [bos]
    before, after = PLAIN_TEMPLATE.split("{prompt}")
    return (
        ("{{ bos_token }}" if adds_bos else "") + "{% for m in messages %}"
        "{% if m['role'] == 'user' %}" + before + "{{ m['content'] }}" + after
        + "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}"
        "{% endfor %}"
    )


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of :func:`prompt_text`.

    A chat template writes its own special tokens (BOS included), so none are added; the plain
    template gets the tokenizer's usual ones (e.g. BOS).
    """
    return _ids(tokenizer, prompt_text(tokenizer, prompt), special=not has_chat_template(tokenizer))


def tokenize_example(
    tokenizer: Any, prompt: str, response: str, max_length: int, *, pad: bool = False
) -> Features:
    """``input_ids``, ``attention_mask`` and ``labels`` of one example (see the module docstring).

    With ``pad=True`` the example is padded to ``max_length`` (on the tokenizer's padding side)
    with attention 0 and label ``-100``; otherwise padding is left to :class:`PadCollator`.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token")
    p_ids = prompt_ids(tokenizer, prompt)
    r_ids = _ids(tokenizer, response, special=False) + [eos]
    if len(p_ids) + len(r_ids) > max_length:
        keep_prompt = max(max_length - len(r_ids), min(len(p_ids), max_length // 2))
        p_ids = p_ids[len(p_ids) - keep_prompt :]
        r_ids = r_ids[: max_length - len(p_ids)]
    input_ids = p_ids + r_ids
    labels = [IGNORE_INDEX] * len(p_ids) + r_ids
    attention = [1] * len(input_ids)
    if pad and len(input_ids) < max_length:
        n = max_length - len(input_ids)
        pad_id = pad_token_id(tokenizer)
        if getattr(tokenizer, "padding_side", "right") == "left":
            input_ids, attention = [pad_id] * n + input_ids, [0] * n + attention
            labels = [IGNORE_INDEX] * n + labels
        else:
            input_ids, attention = input_ids + [pad_id] * n, attention + [0] * n
            labels = labels + [IGNORE_INDEX] * n
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def tokenize_examples(
    tokenizer: Any, examples: Iterable[Mapping[str, str]], max_length: int
) -> list[Features]:
    """:func:`tokenize_example` over ``{"prompt", "response"}`` examples (unpadded)."""
    return [tokenize_example(tokenizer, e["prompt"], e["response"], max_length) for e in examples]


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad token id, or its EOS id where it has none."""
    pad: int | None = tokenizer.pad_token_id
    eos: int = tokenizer.eos_token_id
    return eos if pad is None else pad


class PadCollator:
    """Pads a batch of :func:`tokenize_example` features to its longest example.

    Input ids get ``pad_id``, the attention mask 0, labels ``-100``; ``side`` is ``"right"`` or
    ``"left"``; ``multiple_of`` rounds the length up (e.g. 8 for tensor cores).
    """

    def __init__(self, pad_id: int, side: str = "right", multiple_of: int | None = None) -> None:
        if side not in ("right", "left"):
            raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
        self.pad_id, self.side, self.multiple_of = pad_id, side, multiple_of

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        """Stack the padded features into long tensors."""
        length = max(len(f["input_ids"]) for f in features)
        if self.multiple_of:
            length = -(-length // self.multiple_of) * self.multiple_of
        fill = {"input_ids": self.pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch: dict[str, list[list[int]]] = {k: [] for k in fill}
        for f in features:
            n = length - len(f["input_ids"])
            for key, value in fill.items():
                row = list(f[key])
                batch[key].append(row + [value] * n if self.side == "right" else [value] * n + row)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
