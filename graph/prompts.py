"""Prompt templates: plain text files with named ``{placeholders}``, one per node.

The shipped templates live in ``graph/prompts/<name>.txt``. A user overrides any of them by
name, from a folder (``--prompts DIR`` / ``Context.prompts_dir``) or inline
(``Context.prompts``, which is how Studio swaps a prompt). Templates are validated before any
LLM call: a missing required placeholder or an unknown one is a :class:`PromptError`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class TemplateSpec:
    """Which placeholders a template must have and which it may have."""

    required: frozenset[str]
    optional: frozenset[str] = frozenset()


SPECS: dict[str, TemplateSpec] = {
    "weakness_critic": TemplateSpec(frozenset({"summary"}), frozenset({"principles", "avoid"})),
    "generator": TemplateSpec(frozenset({"examples", "weakness"}), frozenset({"principles"})),
    "self_instruct_generator": TemplateSpec(frozenset({"examples"})),
    "summarizer": TemplateSpec(frozenset({"summary", "weakness"}), frozenset({"prompts"})),
    "responder": TemplateSpec(frozenset()),
}
"""Template names and their placeholders. ``responder`` is the responder's system prompt."""


class PromptError(ValueError):
    """A prompt template is missing, malformed, or has wrong placeholders."""


def placeholders(template: str) -> set[str]:
    """Named placeholders of a ``str.format`` template."""
    try:
        names = {
            field for _, field, _, _ in string.Formatter().parse(template) if field is not None
        }
    except ValueError as exc:
        raise PromptError(f"malformed template: {exc}") from exc
    for name in names:
        if not name.isidentifier():
            raise PromptError(f"placeholder {{{name}}} is not a name (use {{{{ }}}} for braces)")
    return names


def validate(name: str, template: str) -> None:
    """Raise :class:`PromptError` if ``template`` does not fit the spec of ``name``."""
    if name not in SPECS:
        raise PromptError(f"unknown prompt {name!r}; known prompts: {', '.join(sorted(SPECS))}")
    spec = SPECS[name]
    found = placeholders(template)
    if missing := spec.required - found:
        raise PromptError(
            f"prompt {name!r} lacks placeholder(s) "
            + ", ".join(f"{{{m}}}" for m in sorted(missing))
        )
    if unknown := found - spec.required - spec.optional:
        allowed = ", ".join(f"{{{m}}}" for m in sorted(spec.required | spec.optional)) or "none"
        raise PromptError(
            f"prompt {name!r} has unknown placeholder(s) "
            + ", ".join(f"{{{u}}}" for u in sorted(unknown))
            + f"; allowed: {allowed}"
        )


def _shipped(name: str) -> str:
    return resources.files("graph").joinpath("prompts", f"{name}.txt").read_text("utf-8")


@lru_cache(maxsize=32)
def _load(prompts_dir: str | None, overrides: tuple[tuple[str, str], ...]) -> dict[str, str]:
    templates = {name: _shipped(name) for name in SPECS}
    if prompts_dir:
        folder = Path(prompts_dir)
        if not folder.is_dir():
            raise PromptError(f"prompts folder {folder} does not exist")
        for path in sorted(folder.glob("*.txt")):
            if path.stem not in SPECS:
                raise PromptError(
                    f"{path}: unknown prompt name {path.stem!r}; known: {', '.join(sorted(SPECS))}"
                )
            templates[path.stem] = path.read_text("utf-8")
    for name, text in overrides:
        if name not in SPECS:
            raise PromptError(f"unknown prompt {name!r}; known: {', '.join(sorted(SPECS))}")
        templates[name] = text
    for name, text in templates.items():
        validate(name, text)
    return templates


def load_prompts(
    prompts_dir: str | None = None, overrides: dict[str, str] | None = None
) -> dict[str, str]:
    """All templates, shipped ones overridden by the folder, then by inline overrides."""
    return dict(_load(prompts_dir, tuple(sorted((overrides or {}).items()))))


def render(template: str, **values: str) -> str:
    """Fill a template; values it does not use are ignored."""
    return template.format_map({name: values.get(name, "") for name in placeholders(template)})
