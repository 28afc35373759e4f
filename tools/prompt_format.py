"""How a model without a chat template is prompted: one definition for training and evaluation.

The paper's targets (Mistral-7B-v0.1, Llama-2-7b, Falcon-7b) are base models with no chat
template. Training (``training.format``) renders a prompt with :data:`PLAIN_TEMPLATE` and
appends the response; evaluation (``evaluation.safety``: safety and over-refusal) sends the same
text to ``/v1/completions`` and stops at :data:`PLAIN_STOP`, so that a model is evaluated on the
format it was trained on. The exact strings are compared in ``tests/test_prompt_format.py``.
"""

from __future__ import annotations

PLAIN_TEMPLATE = "### User:\n{prompt}\n\n### Assistant:\n"
"""The prompt of a model without a chat template, up to where its response starts."""

PLAIN_STOP = ["### User:"]
"""Where a base model's answer ends: the next turn it would write itself."""


def plain_prompt(prompt: str) -> str:
    """``prompt`` in :data:`PLAIN_TEMPLATE`."""
    return PLAIN_TEMPLATE.format(prompt=prompt)
