"""Templates: plain text files with named ``{placeholders}``, one per node, that the nodes fill.

Templates are what the nodes fill; prompts are the data rows they make (the seed prompts, the
generated ones), which :mod:`evaluation.data` loads.

The shipped templates live in ``graph/templates/<name>.txt``. A user overrides any of them by
name, from a folder (``--prompts DIR`` / ``Context.prompts_dir``; the names predate the word
"template" and stay, as saved ``run.json`` files hold them) or inline (``Context.prompts``,
which is how Studio swaps a template). Templates are validated before any LLM call: a file that
is not UTF-8, an unmatched brace, a missing required placeholder or an unknown one is a
:class:`TemplateError` naming the file (or the inline override) and the line.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from tools.files import TextFileError, read_text


@dataclass(frozen=True)
class TemplateSpec:
    """Which placeholders a template must have and which it may have."""

    required: frozenset[str]
    optional: frozenset[str] = frozenset()


SPECS: dict[str, TemplateSpec] = {
    "weakness_critic": TemplateSpec(
        frozenset({"summary"}), frozenset({"principles", "avoid", "failures", "coverage"})
    ),
    "weakness_critic_batch": TemplateSpec(
        frozenset({"summary", "count"}), frozenset({"principles", "avoid", "failures", "coverage"})
    ),
    "generator": TemplateSpec(frozenset({"examples", "weakness"}), frozenset({"principles"})),
    "self_instruct_generator": TemplateSpec(frozenset({"examples"})),
    "summarizer": TemplateSpec(frozenset({"summary", "weakness"}), frozenset({"prompts"})),
    "summarizer_batch": TemplateSpec(frozenset({"summary", "categories"}), frozenset({"count"})),
    "summarizer_delta": TemplateSpec(frozenset({"summary", "categories"}), frozenset({"count"})),
    "responder": TemplateSpec(frozenset()),
    "prompt_judge": TemplateSpec(frozenset({"prompt", "categories"})),
}
"""Template names and their placeholders. ``responder`` is the responder's system prompt. The
``_batch`` templates are the critic's and the summarizer's when a round has several weaknesses
(``Context.weaknesses_per_round`` > 1, or the critic asked for the ones still missing):
``{count}`` categories at once; with one, the paper's ``weakness_critic`` and ``summarizer``.
``summarizer_delta`` is the summarizer's at any W with ``Context.summary_update = "delta"``: it
asks for the changed lines only.
The critic's ``{failures}`` is empty unless the run steers from a trained model's failures
(``Context.steer_from``): then a paragraph starting with two newlines.
The critic's optional ``{coverage}`` is the measured prompts per taxonomy category when a judge
is configured (empty otherwise); ``prompt_judge`` is the ``llm`` judge's (``nodes.judge``)."""


class TemplateError(ValueError):
    """A template is missing, malformed, or has wrong placeholders."""


def placeholders(template: str, source: str = "template") -> set[str]:
    """Named placeholders of a ``str.format`` template (``source`` names it in errors)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(_brace_error(template, source) or f"{source}: {exc}") from None
    names = {name for _, name, _, _ in parsed if name is not None}
    for name in names:
        if not name.isidentifier():
            line = _line_of(template, "{" + name if name else "{}")
            raise TemplateError(
                f"{source} line {line}: placeholder {{{name}}} is not a name "
                "(write '{{' and '}}' for literal braces)"
            )
    return names


def _brace_error(template: str, source: str) -> str | None:
    """Where ``template`` has a brace that opens or closes nothing, with its line."""
    at = 0
    while at < len(template):
        pair = template[at : at + 2]
        if pair in ("{{", "}}"):
            at += 2  # an escaped, literal brace
        elif template[at] == "{":
            close, reopen = template.find("}", at + 1), template.find("{", at + 1)
            if close == -1 or -1 < reopen < close:
                return _unmatched(template, at, source)
            at = close + 1
        elif template[at] == "}":
            return _unmatched(template, at, source)
        else:
            at += 1
    return None


def _unmatched(template: str, at: int, source: str) -> str:
    brace = template[at]
    line = template.count("\n", 0, at) + 1
    return f"{source} line {line}: unmatched '{brace}' (write '{brace * 2}' for a literal brace)"


def _line_of(template: str, text: str) -> int:
    return template.count("\n", 0, max(template.find(text), 0)) + 1


def validate(name: str, template: str, source: str | None = None) -> None:
    """Raise :class:`TemplateError` if ``template`` does not fit the spec of ``name``.

    ``source`` (a file, or where an inline override came from) starts every message.
    """
    if name not in SPECS:
        raise TemplateError(
            f"unknown template {name!r}; known templates: {', '.join(sorted(SPECS))}"
        )
    where = source or f"template {name!r}"
    spec = SPECS[name]
    found = placeholders(template, where)
    if missing := spec.required - found:
        raise TemplateError(
            f"{where}: template {name!r} lacks placeholder(s) "
            + ", ".join(f"{{{m}}}" for m in sorted(missing))
        )
    if unknown := found - spec.required - spec.optional:
        allowed = ", ".join(f"{{{m}}}" for m in sorted(spec.required | spec.optional)) or "none"
        raise TemplateError(
            f"{where}: template {name!r} has unknown placeholder(s) "
            + ", ".join(f"{{{u}}}" for u in sorted(unknown))
            + f"; allowed: {allowed}"
        )


def _shipped(name: str) -> str:
    return resources.files("graph").joinpath("templates", f"{name}.txt").read_text("utf-8")


@lru_cache(maxsize=32)
def _load(templates_dir: str | None, overrides: tuple[tuple[str, str], ...]) -> dict[str, str]:
    templates = {name: _shipped(name) for name in SPECS}
    sources = {name: f"graph/templates/{name}.txt" for name in SPECS}
    if templates_dir:
        folder = Path(templates_dir)
        if not folder.is_dir():
            raise TemplateError(f"templates folder {folder} does not exist")
        for path in sorted(folder.glob("*.txt")):
            if path.stem not in SPECS:
                raise TemplateError(
                    f"{path}: unknown template name {path.stem!r}; "
                    f"known: {', '.join(sorted(SPECS))}"
                )
            try:
                templates[path.stem] = read_text(path)
            except TextFileError as exc:
                raise TemplateError(str(exc)) from None
            sources[path.stem] = str(path)
    for name, text in overrides:
        if name not in SPECS:
            raise TemplateError(f"unknown template {name!r}; known: {', '.join(sorted(SPECS))}")
        templates[name], sources[name] = text, f"inline template {name!r}"
    for name, text in templates.items():
        validate(name, text, sources[name])
    return templates


def load_templates(
    templates_dir: str | None = None, overrides: dict[str, str] | None = None
) -> dict[str, str]:
    """All templates, shipped ones overridden by the folder, then by inline overrides."""
    return dict(_load(templates_dir, tuple(sorted((overrides or {}).items()))))


def render(template: str, **values: str) -> str:
    """Fill a template; values it does not use are ignored."""
    return template.format_map({name: values.get(name, "") for name in placeholders(template)})
