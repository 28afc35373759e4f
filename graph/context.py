"""Runtime context of a run: endpoints and models per role, sampling, method settings, prompts.

The context is passed to every invocation (``graph.invoke(..., context=Context(...))``) and is
never written to a checkpoint. It holds the *name* of the environment variable with the API
key, never the key itself. Fields left at their defaults can be set from ``DATA_ADVISOR_*``
environment variables, which is how `langgraph dev` / Studio picks up an endpoint.

:class:`StudioContext` is the context of the Studio graphs: each thread is a run folder of its
own, ``<runs_dir>/<thread id>/``, which the ``status``, ``history`` and ``export`` commands read.
"""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from tools.llm import Endpoint

Role = Literal["advisor", "generator", "responder"]

_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

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
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key is never stored)."""
    request_timeout: float = 300.0
    max_retries: int = 3
    """Per-request retries on transient errors (connection, timeout, 429, 5xx), with backoff."""
    max_concurrency: int = 32

    # --- sampling --------------------------------------------------------------------------
    generator_temperature: float = 1.0
    advisor_temperature: float = 0.7
    responder_temperature: float = 0.7
    top_p: float = 0.95
    generator_max_tokens: int = 64
    critic_max_tokens: int = 24
    summarizer_max_tokens: int = 320
    responder_max_tokens: int = 256

    # --- the method ------------------------------------------------------------------------
    principles: str = DEFAULT_PRINCIPLES
    prompts_per_round: int = 10
    """K: new prompts requested from the generator per round."""
    examples_per_request: int = 3
    """In-context examples drawn from the pool for each generator request."""
    rounds: int = 10
    target_size: int | None = None
    """Stop once this many prompts are kept (in addition to the round bound)."""
    seed: int = 0
    rule_check: bool = True
    critic_attempts: int = 3
    max_summary_lines: int = 40
    max_line_words: int = 5
    min_prompt_words: int = 4
    near_duplicate_threshold: float = 0.8

    # --- prompts, seeds and storage --------------------------------------------------------
    prompts_dir: str | None = None
    """Folder of ``<node>.txt`` templates overriding the shipped ones by name."""
    prompts: dict[str, str] = field(default_factory=dict)
    """Template overrides by name (how Studio swaps a prompt)."""
    seed_prompts_file: str | None = None
    seed_categories_file: str | None = None
    data_path: str = "data-advisor.sqlite"
    """SQLite file holding the run's tables (prompts, pool, rounds)."""

    def __post_init__(self) -> None:
        """Fill fields still at their default from ``DATA_ADVISOR_<FIELD>`` variables."""
        for f in fields(self):
            env = os.environ.get(f"DATA_ADVISOR_{f.name.upper()}")
            if env is None or f.name == "prompts" or getattr(self, f.name) != _default(f):
                continue
            setattr(self, f.name, _coerce(env, f.type))

    def endpoint(self, role: Role) -> Endpoint:
        """The endpoint for one role (advisor, generator or responder)."""
        return Endpoint(
            base_url=getattr(self, f"{role}_base_url") or self.base_url,
            model=getattr(self, f"{role}_model") or self.model,
            api_key_env=self.api_key_env,
            timeout=self.request_timeout,
            max_retries=self.max_retries,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (it holds no secret)."""
        return asdict(self)

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


def _default(f: Any) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def _coerce(value: str, type_name: Any) -> Any:
    text = str(type_name)
    if text.startswith("bool"):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if text.startswith("int"):
        return int(value)
    if text.startswith("float"):
        return float(value)
    return value
