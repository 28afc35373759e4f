"""LLM access: `ChatOpenAI` clients against any OpenAI-compatible endpoint (vLLM, OpenAI, a stub).

One endpoint per role. The API key is read from the environment variable the context names,
at call time, and is never stored. Each request is retried by the OpenAI client on transient
errors only (connection, timeout, 408/409/429, 5xx) with exponential backoff; a whole node is
retried by LangGraph's ``RetryPolicy`` with :func:`is_transient` as its filter. Batches run
concurrently, bounded by ``max_concurrency``, on a thread pool kept for the process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import wait
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import openai
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables.config import ContextThreadPoolExecutor
from langchain_openai import ChatOpenAI
from langgraph.types import RetryPolicy

Messages = Sequence[BaseMessage | tuple[str, str]]


@dataclass(frozen=True)
class Endpoint:
    """Where one role's model is served."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 300.0
    max_retries: int = 3


class EndpointError(RuntimeError):
    """An LLM call failed; says which role, URL and model, and whether it was transient."""

    def __init__(self, role: str, endpoint: Endpoint, error: Exception) -> None:
        self.role, self.endpoint, self.error = role, endpoint, error
        kind = "cannot reach" if isinstance(error, openai.APIConnectionError) else "error from"
        super().__init__(
            f"{kind} the {role} endpoint {endpoint.base_url} (model {endpoint.model!r}): "
            f"{type(error).__name__}: {error}"
        )


def is_transient(error: BaseException) -> bool:
    """True for errors worth retrying: connection, timeout, rate limit and server (5xx) errors."""
    if isinstance(error, EndpointError):
        error = error.error
    if isinstance(error, openai.APIConnectionError | openai.RateLimitError):
        return True  # APITimeoutError is a subclass of APIConnectionError
    return isinstance(error, openai.APIStatusError) and error.status_code >= 500


NODE_RETRY = RetryPolicy(
    initial_interval=2.0, backoff_factor=2.0, max_attempts=3, retry_on=is_transient
)
"""Node-level retry: only transient endpoint errors; a 4xx fails at once."""


@lru_cache(maxsize=64)
def _client(endpoint: Endpoint, api_key: str, params: tuple[tuple[str, Any], ...]) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=endpoint.base_url,
        model=endpoint.model,
        api_key=api_key,
        timeout=endpoint.timeout,
        max_retries=endpoint.max_retries,
        **dict(params),
    )


def chat_model(endpoint: Endpoint, **params: Any) -> ChatOpenAI:
    """A (cached) `ChatOpenAI` for an endpoint and sampling parameters (temperature, stop, ...)."""
    api_key = os.environ.get(endpoint.api_key_env) or "EMPTY"
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))
    return _client(endpoint, api_key, frozen)


def generate(
    role: str,
    endpoint: Endpoint,
    requests: Sequence[Messages],
    *,
    max_concurrency: int = 32,
    **params: Any,
) -> list[AIMessage]:
    """Send many chat requests concurrently; raise :class:`EndpointError` if any fails."""
    if not requests:
        return []
    model = chat_model(endpoint, **params)
    if len(requests) == 1:
        try:
            return [model.invoke(requests[0])]  # type: ignore[list-item]
        except Exception as error:
            raise EndpointError(role, endpoint, error) from error
    futures = [_executor(max_concurrency).submit(model.invoke, r) for r in requests]
    wait(futures)
    for future in futures:
        if error := future.exception():
            raise EndpointError(role, endpoint, error) from error  # type: ignore[arg-type]
    return [future.result() for future in futures]  # type: ignore[misc]


@lru_cache(maxsize=8)
def _executor(max_workers: int) -> ContextThreadPoolExecutor:
    """A long-lived pool per concurrency bound (a new pool per batch costs a thread per call).

    Each task runs in a copy of the caller's context, so LangGraph streaming and tracing see the
    calls as the node's, as with ``Runnable.batch``.
    """
    return ContextThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="llm")


def output_tokens(messages: Sequence[AIMessage]) -> int:
    """Completion tokens reported by the server for these answers."""
    return sum((m.usage_metadata or {}).get("output_tokens", 0) for m in messages)
