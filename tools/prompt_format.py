"""How a model without a chat template is prompted: one definition for training and evaluation.

The paper's targets (Mistral-7B-v0.1, Llama-2-7b, Falcon-7b) are base models with no chat
template. Training (``training.format``) renders a prompt with :data:`PLAIN_TEMPLATE` and
appends the response; evaluation (``evaluation.safety``: safety and over-refusal) sends the same
text to ``/v1/completions`` and stops at :data:`PLAIN_STOP`, so that a model is evaluated on the
format it was trained on. The exact strings are compared in ``tests/test_prompt_format.py``.

Training records in the adapter folder which format it used (:data:`FORMAT_FILE`,
:func:`format_record`); evaluation of that adapter uses it unless told otherwise
(:func:`choose_format`), and says so when told otherwise.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, cast

PLAIN_TEMPLATE = "### User:\n{prompt}\n\n### Assistant:\n"
"""The prompt of a model without a chat template, up to where its response starts."""

PLAIN_STOP = ["### User:"]
"""Where a base model's answer ends: the next turn it would write itself."""


def plain_prompt(prompt: str) -> str:
    """``prompt`` in :data:`PLAIN_TEMPLATE`."""
    return PLAIN_TEMPLATE.format(prompt=prompt)


FORMAT_FILE = "prompt_format.json"
"""Written by training into the adapter folder: the format the adapter was trained with."""

PromptFormatName = Literal["chat", "plain"]


def format_record(chat_template: str | None) -> dict[str, Any]:
    """What an adapter folder records of its training prompt: ``chat`` (the tokenizer's own
    template, by its sha256) or ``plain`` (:data:`PLAIN_TEMPLATE`, as text)."""
    if chat_template:
        return {"prompt_format": "chat",
                "chat_template_sha256": hashlib.sha256(chat_template.encode()).hexdigest()}
    return {"prompt_format": "plain", "template": PLAIN_TEMPLATE}


def recorded_format(adapter: str | Path) -> PromptFormatName | None:
    """The prompt format an adapter folder says it was trained with, or None when it says
    nothing (an adapter made elsewhere, or before the record); a record this code cannot read
    is a ValueError naming the file."""
    path = Path(adapter) / FORMAT_FILE
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text("utf-8")).get("prompt_format")
    except (ValueError, AttributeError) as exc:
        raise ValueError(
            f"{path}: not a prompt-format record ({exc}); delete it or retrain"
        ) from None
    if name not in ("chat", "plain"):
        raise ValueError(f"{path}: prompt_format {name!r} is neither 'chat' nor 'plain'")
    return cast(PromptFormatName, name)


def choose_format(asked: str | None, adapter: str | Path | None) -> tuple[PromptFormatName, str]:
    """The prompt format to evaluate with, and a warning (``""`` for none): the one asked for,
    else the adapter's recorded one, else ``chat``. Asking for another than the adapter's
    record is allowed, with a warning that says what it means."""
    recorded = recorded_format(adapter) if adapter is not None else None
    if asked is None:
        return recorded or "chat", ""
    if asked not in ("chat", "plain"):
        raise ValueError(f"prompt format must be 'chat' or 'plain', got {asked!r}")
    chosen = cast(PromptFormatName, asked)
    if recorded is not None and recorded != chosen:
        return chosen, (f"warning: {adapter} was trained with the {recorded} prompt format; "
                        f"--prompt-format {chosen} evaluates it on a format it never saw "
                        f"(leave --prompt-format out to use {recorded})")
    return chosen, ""
