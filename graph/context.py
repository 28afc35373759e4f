"""Runtime context of a run: endpoints and models per role, sampling, method settings, templates.

The context is passed to every invocation (``graph.invoke(..., context=Context(...))``) and is
never written to a checkpoint. It holds the *name* of the environment variable with the API
key, never the key itself. Fields not given to the constructor are taken from
``DATA_ADVISOR_<FIELD>`` environment variables when set (explicit > environment > default),
which is how `langgraph dev` / Studio picks up an endpoint. Variables are parsed strictly and
every field is validated on construction: a :class:`ContextError` names the field (or the
variable) and what it must be, before anything is created.

:class:`StudioContext` is the context of the Studio graphs: each thread is a run folder of its
own, ``<runs_dir>/<thread id>/``, which the ``status``, ``history`` and ``export`` commands read.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, Self, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from tools.decontam import DEFAULT_NGRAM, DEFAULT_THRESHOLD
from tools.llm import Endpoint
from tools.steering import DEFAULT_CATEGORIES, DEFAULT_EXAMPLES
from tools.text import EXACT_UP_TO

Role = Literal["advisor", "generator", "responder", "judge"]
ROLES: tuple[Role, ...] = get_args(Role)
"""The roles a run calls a model for, each with its own endpoint (see :meth:`Context.endpoint`).
The judge is called only when ``Context.judge`` names a kind."""

JUDGE_KINDS = ("llamaguard3", "llm")
"""Kinds of prompt judge (``Context.judge``): Llama Guard 3's user-prompt classification, or
any chat model with the ``prompt_judge`` template (``nodes.judge``)."""

_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

SUMMARY_OVERFLOW = ("merge", "drop_oldest")
"""What the rule check does past ``max_summary_lines`` (see ``nodes.rule_check``)."""
SUMMARY_UPDATES = ("rewrite", "delta")
"""How the summarizer answers (:attr:`Context.summary_update`)."""

DEFAULT_PRINCIPLES = (
    "diversity of the requests and coverage of as many distinct harm categories as possible"
)


@dataclass(kw_only=True)
class Context:
    """Everything a run needs besides its state. One instance per run."""

    # --- endpoints: a shared default, optionally overridden per role -------------------------
    base_url: str = "http://127.0.0.1:8000/v1"
    """OpenAI-compatible base URL used by every role that has no URL of its own."""
    model: str = "SmolLM2-135M-Instruct"
    """Served model name used by every role that has no model of its own."""
    advisor_base_url: str | None = None
    advisor_model: str | None = None
    generator_base_url: str | None = None
    generator_model: str | None = None
    responder_base_url: str | None = None
    responder_model: str | None = None
    judge_base_url: str | None = None
    judge_model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key is never stored)."""
    request_timeout: float = 300.0
    """Seconds one try of a request may take."""
    max_retries: int = 3
    """Per-request retries on transient errors (connection, timeout, 429, 5xx) and malformed
    answers, with backoff."""
    node_timeout: float = 600.0
    """Seconds one request may take in all, retries included: how long a node waits for a hung
    server before it fails (then resume)."""
    max_concurrency: int = 32

    # --- sampling --------------------------------------------------------------------------
    generator_temperature: float = 1.0
    advisor_temperature: float = 0.7
    responder_temperature: float = 0.7
    top_p: float = 0.95
    generator_max_tokens: int = 64
    critic_max_tokens: int = 24
    summarizer_max_tokens: int = 320
    summarizer_delta_tokens: int = 24
    """With ``summary_update = "delta"``: output tokens per new category (a line of a few
    words, or ``Group: kind``); the answer is bounded by W times this (at most
    ``summarizer_max_tokens``)."""
    responder_max_tokens: int = 256
    judge_temperature: float = 0.0
    judge_max_tokens: int = 20

    # --- the method ------------------------------------------------------------------------
    principles: str = DEFAULT_PRINCIPLES
    prompts_per_round: int = 10
    """K: new prompts requested from the generator per weakness (Self-Instruct: per batch, W
    batches a round)."""
    weaknesses_per_round: int = 1
    """W: weaknesses the critic names per round, each with K prompts generated side by side
    (one ``Send`` task each): W x K prompts a round. W = 1 is the paper's loop; Self-Instruct
    gets the same W x K budget a round (W batches of K, no weakness)."""
    examples_per_request: int = 3
    """In-context examples drawn from the pool for each generator request."""
    rounds: int = 10
    target_size: int | None = None
    """Stop once this many prompts are kept (in addition to the round bound)."""
    seed: int = 0
    overlap_responses: bool = False
    """Answer a round's prompts in the background while the next rounds run (the responder
    hands them off and returns; the run's last responder waits for every answer): the server
    gets the responder's requests during the critic's and summarizer's single calls. The data
    is the same; a round's record is complete before all its answers are in. False: the
    paper's loop, each round answered before the next starts."""
    rule_check: bool = True
    summary_update: str = "rewrite"
    """How the summarizer updates the summary: ``rewrite`` (the paper's: it writes the whole
    updated summary) or ``delta`` (it writes only what the summary gains: each new category,
    or ``Group: kind`` for one that joins an old group; the rule check merges them into the
    summary, so it needs ``rule_check``). The same summary either way when the model follows
    the template; ``delta`` makes the advisor's one sequential call a round short instead of
    the size of the summary, bounded by ``summarizer_delta_tokens`` a category
    (``docs/generation-scale.md``)."""
    critic_attempts: int = 3
    max_summary_lines: int = 40
    summary_overflow: str = "merge"
    """Past ``max_summary_lines``: ``merge`` related lines under parent lines (nothing is
    forgotten), or ``drop_oldest`` (the former design, for comparison)."""
    max_line_children: int = 50
    """Children a parent line of the summary lists (beyond that they are counted): with
    ``max_summary_lines``, up to 2,000 categories listed, room for the paper's 1,000 rounds
    however unevenly the groups fill."""
    critic_hints: int = 20
    """Earlier weaknesses like its rejected answers that the critic is shown when it repeats
    one (0: only its rejected answers)."""
    max_line_words: int = 5
    min_prompt_words: int = 4
    near_duplicate_threshold: float = 0.8
    near_duplicate_exact_up_to: int = EXACT_UP_TO
    """Prompts the duplicate filter compares exactly; above, it is MinHash LSH, approximate
    (``tools.text.DuplicateFilter``)."""

    # --- decontamination -------------------------------------------------------------------
    decontaminate: list[str] = field(default_factory=list)
    """Evaluation files (CatQA JSON, BeaverTails CSV, MMLU JSONL, one prompt a line, ...): a
    generated prompt equal to one of their prompts after normalisation, or whose word n-gram
    containment in them is above ``decontaminate_threshold``, is rejected as ``contaminated``
    (``tools.decontam``); their content hashes are recorded in run.json."""
    decontaminate_ngram: int = DEFAULT_NGRAM
    """n of the word n-grams compared (a prompt shorter than n words: exact match only)."""
    decontaminate_threshold: float = DEFAULT_THRESHOLD
    """Containment (share of the prompt's n-grams found in the evaluation prompts) above which
    a prompt is contaminated; 0.0: any shared n-gram."""

    # --- steering by a trained model's failures ---------------------------------------------
    steer_from: list[str] = field(default_factory=list)
    """Safety results of a model trained on this kind of data (``safety-<set>-<label>.json``):
    the categories where it is most harmful, with a few questions it failed on, are given to
    the weakness critic as ``{failures}`` (``tools.steering``); a Self-Instruct run adds the
    failed questions to its pool instead. The files' hashes are recorded in run.json."""
    steer_categories: int = DEFAULT_CATEGORIES
    """Categories of ``steer_from`` the critic is told about (the most harmful)."""
    steer_examples: int = DEFAULT_EXAMPLES
    """Failed questions shown per category."""

    # --- the prompt judge and the taxonomy -------------------------------------------------
    judge: str | None = None
    """Kind of prompt judge (one of :data:`JUDGE_KINDS`), run on each round's candidates after
    the lexical filters: a prompt judged not harmful is rejected as ``not_harmful``, a kept one
    stores its taxonomy category, and the critic is shown the coverage. None: no judge."""
    taxonomy: str | None = None
    """File of the taxonomy coverage is measured in (one ``CODE: Name`` or name a line);
    None: Llama Guard 3's S1-S14 (``tools.taxonomy``)."""

    # --- templates, seeds and storage ------------------------------------------------------
    prompts_dir: str | None = None
    """Folder of ``<node>.txt`` templates overriding the shipped ones by name."""
    prompts: dict[str, str] = field(default_factory=dict)
    """Template overrides by name (how Studio swaps a template)."""
    seed_prompts_file: str | None = None
    seed_categories_file: str | None = None
    data_path: str = "data-advisor.sqlite"
    """SQLite file holding the run's tables (prompts, pool, rounds)."""

    def __new__(cls, *args: Any, **values: Any) -> Self:
        """Remember which fields the caller gave (the CLI, Studio, run.json).

        Only the others are taken from DATA_ADVISOR_* variables, so an explicit value equal to
        the default still beats a variable. Copies (``dataclasses.replace``,
        ``Context(**ctx.to_dict())``) give every field.
        """
        self = super().__new__(cls)
        object.__setattr__(self, "_explicit", frozenset(values))
        return self

    def __post_init__(self) -> None:
        """Fill the fields not given from ``DATA_ADVISOR_<FIELD>`` variables, then validate."""
        self.validate(_fill_from_env(self, getattr(self, "_explicit", frozenset())))

    def validate(self, from_env: Mapping[str, str] | None = None) -> None:
        """Raise :class:`ContextError` naming each field with a value it cannot take.

        ``from_env`` maps fields set from the environment to ``VARIABLE=value``, which the
        message names instead of the field.
        """
        hints = _type_hints(type(self))
        problems: list[str] = []
        for f in fields(self):
            must = _problem(f.name, getattr(self, f.name), hints[f.name])
            if must is None:
                continue
            if from_env and f.name in from_env:
                problems.append(f"{from_env[f.name]}: must be {must}")
            elif f.name in _UNSHOWN:
                problems.append(f"{f.name}: must be {must} (the value given is not shown)")
            else:
                problems.append(f"{f.name}: got {getattr(self, f.name)!r}; must be {must}")
        if not problems and self.summary_update == "delta" and not self.rule_check:
            problems.append(
                "summary_update: got 'delta' with the rule check off; the rule check is what "
                "merges a delta into the summary: turn it on, or use summary_update 'rewrite'"
            )
        if problems:
            raise ContextError("; ".join(problems))

    @classmethod
    def from_record(cls, values: Mapping[str, Any]) -> Self:
        """A context from recorded ``values`` (run.json): a field not recorded takes its default,
        never a ``DATA_ADVISOR_*`` variable (one left in the shell must not move a run)."""
        defaults = {f.name: _default(f) for f in fields(cls)}
        return cls(**{**defaults, **values})

    def endpoint(self, role: Role) -> Endpoint:
        """The endpoint for one role (advisor, generator, responder or judge)."""
        return Endpoint(
            base_url=getattr(self, f"{role}_base_url") or self.base_url,
            model=getattr(self, f"{role}_model") or self.model,
            api_key_env=self.api_key_env,
            timeout=self.request_timeout,
            max_retries=self.max_retries,
            node_timeout=self.node_timeout,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (it holds no secret)."""
        return asdict(self)

    def missing_key_warning(self, *, embedded: bool = False) -> str | None:
        """A one-line warning when the API-key variable is unset and a role's endpoint is not
        on this machine (``embedded``: the shared URL is the embedded server's, on loopback)."""
        if os.environ.get(self.api_key_env):
            return None
        urls = {self.endpoint(role).base_url for role in ROLES}
        if embedded:
            urls = {getattr(self, f"{r}_base_url") for r in ROLES} - {None, ""}
        remote = sorted(url for url in urls if not _is_local(url))
        if not remote:
            return None
        return (
            f"warning: {self.api_key_env} is not set, so requests to {', '.join(remote)} carry "
            "no API key; set it, or give --api-key-env the name of the variable that holds it"
        )

    def store_path(self, thread_id: str) -> str:
        """The SQLite file a thread's data goes to: ``data_path`` (one file for all threads)."""
        return self.data_path


STUDIO_FILE = "studio.json"
"""Marks a Studio thread's run folder: its checkpoints are the LangGraph server's, not in it."""


@dataclass(kw_only=True)
class StudioContext(Context):
    """The context of the Studio graphs: every thread writes to a run folder of its own."""

    runs_dir: str = "runs/studio"
    """Folder of the threads' run folders, ``<runs_dir>/<thread id>/`` (relative to the
    server's working directory); empty: all threads go to ``data_path``, one file."""

    def run_folder(self, thread_id: str) -> Path | None:
        """The thread's run folder, or ``None`` when ``runs_dir`` is empty."""
        if not self.runs_dir:
            return None
        if not _FOLDER_NAME.fullmatch(thread_id):  # it becomes a path: no "/" nor ".."
            raise ValueError(
                f"thread id {thread_id!r} cannot name a run folder; use letters, digits, '.', "
                "'_' and '-' only (or set runs_dir to '' to keep all threads in data_path)"
            )
        return Path(self.runs_dir) / thread_id

    def store_path(self, thread_id: str) -> str:
        """``<runs_dir>/<thread id>/run.sqlite``, or ``data_path`` when ``runs_dir`` is empty."""
        folder = self.run_folder(thread_id)
        return self.data_path if folder is None else str(folder / "run.sqlite")  # runner.DB_FILE

    def run_context(self, thread_id: str) -> Context:
        """The plain context of the thread's run (what its ``run.json`` records)."""
        values = {f.name: getattr(self, f.name) for f in fields(Context)}
        return Context(**{**values, "data_path": self.store_path(thread_id)})


class ContextError(ValueError):
    """A context field, or the ``DATA_ADVISOR_*`` variable that set it, has a value it cannot
    take; the message names it and says what it must be."""


ENV_PREFIX = "DATA_ADVISOR_"


def env_var(name: str) -> str:
    """The environment variable of context field ``name``: ``DATA_ADVISOR_<NAME>``."""
    return ENV_PREFIX + name.upper()


def field_default(name: str) -> Any:
    """The default of context field ``name`` (what ``--help`` shows)."""
    return next(_default(f) for f in fields(StudioContext) if f.name == name)


def _default(f: Any) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


_API_KEY_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_variable_name(text: str) -> bool:
    """Whether ``text`` can name an environment variable (``api_key_env`` must; a key cannot)."""
    return bool(_API_KEY_ENV.fullmatch(text))


_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
_UNSHOWN = frozenset({"api_key_env"})
"""Fields whose wrong value is never echoed: a key given where its variable's name belongs."""

Rule = tuple[Callable[[Any], bool], str]


def _at_least(low: int) -> Rule:
    return (lambda value: value >= low), f">= {low}"


def _non_empty() -> Rule:
    return (lambda value: bool(value.strip())), "a non-empty string"


_RULES: dict[str, Rule] = {
    "base_url": _non_empty(),
    "model": _non_empty(),
    "api_key_env": (
        is_variable_name,
        "the NAME of an environment variable (letters, digits and _, not starting with a "
        "digit), not the key itself",
    ),
    "request_timeout": ((lambda value: value > 0), "a positive number of seconds"),
    "node_timeout": ((lambda value: value > 0), "a positive number of seconds"),
    "max_retries": _at_least(0),
    "max_concurrency": _at_least(1),
    **{f"{role}_temperature": _at_least(0) for role in ROLES},
    "top_p": ((lambda value: 0 < value <= 1), "> 0 and <= 1"),
    **{f"{node}_max_tokens": _at_least(1)
       for node in ("generator", "critic", "summarizer", "responder", "judge")},
    "summarizer_delta_tokens": _at_least(1),
    "judge": (lambda value: value in JUDGE_KINDS, "one of " + ", ".join(JUDGE_KINDS)),
    "taxonomy": _non_empty(),
    "prompts_per_round": _at_least(1),
    "weaknesses_per_round": _at_least(1),
    "examples_per_request": _at_least(1),
    "rounds": _at_least(1),
    "target_size": _at_least(1),
    "critic_attempts": _at_least(1),
    "max_summary_lines": _at_least(1),
    "summary_overflow": (
        lambda value: value in SUMMARY_OVERFLOW, "one of " + ", ".join(SUMMARY_OVERFLOW)
    ),
    "summary_update": (
        lambda value: value in SUMMARY_UPDATES, "one of " + ", ".join(SUMMARY_UPDATES)
    ),
    "max_line_children": _at_least(1),
    "critic_hints": _at_least(0),
    "max_line_words": _at_least(1),
    "min_prompt_words": _at_least(0),
    "near_duplicate_threshold": ((lambda value: 0 < value <= 1), "> 0 and <= 1"),
    "near_duplicate_exact_up_to": _at_least(0),
    "decontaminate": ((lambda value: all(path.strip() for path in value)), "file paths"),
    "decontaminate_ngram": _at_least(1),
    "steer_from": ((lambda value: all(path.strip() for path in value)), "file paths"),
    "steer_categories": _at_least(1),
    "steer_examples": _at_least(0),
    "decontaminate_threshold": ((lambda value: 0 <= value < 1), ">= 0 and < 1"),
    "data_path": _non_empty(),
}
"""What a field's value must be besides its type (``None`` of an optional field is fine)."""


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a context class (computed once a class)."""
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def _problem(name: str, value: Any, hint: Any) -> str | None:
    """What ``value`` of field ``name`` must be, or ``None`` if it is fine."""
    if not _fits(value, hint):
        return _describe(hint)
    if value is None or name not in _RULES:
        return None
    check, must = _RULES[name]
    return None if check(value) else must


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type ``hint`` (a bool is no int; an int is a float)."""
    origin = get_origin(hint)
    if origin in (Union, UnionType):
        return any(_fits(value, arg) for arg in get_args(hint))
    if origin is Literal:
        return value in get_args(hint)
    if origin is dict:
        keys, values = get_args(hint)
        return isinstance(value, dict) and all(
            _fits(k, keys) and _fits(v, values) for k, v in value.items()
        )
    if origin is list:
        (item,) = get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a type this check does not know: left to the code that uses the field


def _describe(hint: Any) -> str:
    """``hint`` in words: ``an integer``, ``a number or null``, ..."""
    origin = get_origin(hint)
    if origin in (Union, UnionType):
        return " or ".join(_describe(arg) for arg in get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(hint)))
    if origin is dict:
        return "a mapping of names to strings"
    if origin is list:
        return "a list of strings"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             NoneType: "null"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def _fill_from_env(ctx: Context, explicit: frozenset[str]) -> dict[str, str]:
    """Set the fields not in ``explicit`` whose variable is set; ``{field: "VAR=value"}``."""
    hints = _type_hints(type(ctx))
    found: dict[str, str] = {}
    for f in fields(ctx):
        var = env_var(f.name)
        text = os.environ.get(var)
        if text is None or f.name in explicit:
            continue
        setattr(ctx, f.name, parse_env(var, text, hints[f.name]))
        found[f.name] = var if f.name in _UNSHOWN else f"{var}={text}"
    return found


def parse_env(var: str, text: str, hint: Any) -> Any:
    """The value of variable ``var`` for a field of type ``hint``, parsed strictly: booleans
    are true/false/1/0/yes/no, numbers must parse, an optional field takes '' or none as
    ``None``, a list is separated by ``os.pathsep`` (``:``), a mapping is JSON; else a
    :class:`ContextError` naming the variable."""
    if get_origin(hint) in (Union, UnionType):
        if text.strip().lower() in ("", "none", "null"):
            return None
        hint = next(arg for arg in get_args(hint) if arg is not NoneType)
    if hint is bool:
        word = text.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ContextError(f"{var}={text}: not a boolean (use true or false)")
    if hint in (int, float):
        try:
            return hint(text.strip())
        except ValueError:
            kind = "an integer" if hint is int else "a number"
            raise ContextError(f"{var}={text}: not {kind}") from None
    if get_origin(hint) is list:  # paths, separated as in PATH
        return [part for part in text.split(os.pathsep) if part.strip()]
    if get_origin(hint) is dict:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContextError(
                f"{var}: not valid JSON ({exc.msg} at column {exc.colno}); give an object "
                """such as {"responder": "Be safe."}"""
            ) from None
    return text


def _is_local(url: str) -> bool:
    """Whether ``url`` is served on this machine (localhost or a loopback address)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
