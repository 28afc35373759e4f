"""LLM access: `ChatOpenAI` clients against any OpenAI-compatible endpoint (vLLM, OpenAI, a stub).

One endpoint per role. The API key is read from the environment variable the context names,
at call time, and is never stored.

Each request is tried up to ``1 + max_retries`` times, with exponential backoff (or the
server's ``Retry-After``), on transient errors (connection, timeout, 408/409/429, 5xx) and on
*malformed* answers: a 200 whose body cannot be read as a chat completion (invalid JSON, an
empty ``choices`` list, an HTML page). Each try waits at most ``timeout`` seconds and one
request at most ``node_timeout`` seconds in all, so a hung server fails a node after that long,
with a message saying how long it waited. A whole node is retried by LangGraph's
``RetryPolicy`` (:data:`NODE_RETRY`) with :func:`is_transient` as its filter; a batch keeps the
answers it got, so that retry (or a resume in the same process) re-sends only the requests that
failed.

An error-rate circuit breaker per run and URL stops the run when most of the last
:data:`BREAKER_WINDOW` requests failed (:class:`CircuitOpenError`, not retried): the data
written so far is kept and ``resume`` continues.

Every LLM caller of the app goes through this module:

- clients: :func:`chat_model` (LangChain, for the graph's nodes through :func:`generate`) and
  :func:`openai_client` (the OpenAI client, for the evaluation's completions, judges and model
  listings) are built from one place, :func:`client_options` (URL, key, timeout);
- concurrency: :func:`map_concurrently` maps a call over items, bounded by
  ``max_concurrency``, on a thread pool kept for the process per bound, and yields each result
  as it arrives (to store it at once); :func:`map_in_order` collects them in order;
- progress: :func:`batch_progress`, the bar drawn over a batch (evaluation).
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import queue
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar

import openai
from langchain_core.messages import AIMessage, BaseMessage
from langchain_openai import ChatOpenAI
from langgraph.types import RetryPolicy
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

Messages = Sequence[BaseMessage | tuple[str, str]]
T = TypeVar("T")
R = TypeVar("R")

BREAKER_WINDOW = 20
"""Requests (tries) per run and URL the circuit breaker looks back on."""
BREAKER_RATE = 0.5
"""The breaker stops the run when more than this share of the last window failed."""
BACKOFF_START, BACKOFF_MAX, RETRY_AFTER_MAX = 0.5, 8.0, 60.0
"""Seconds: first backoff (doubled per try, with jitter), its cap, the longest Retry-After."""
_KEPT_MAX = 4096
"""Answers of failed batches kept at most (the oldest are dropped)."""


@dataclass(frozen=True)
class Endpoint:
    """Where one role's model is served, and how long to wait for it."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 300.0
    """Seconds one try of a request may take."""
    max_retries: int = 3
    """Tries after the first, on transient errors and malformed answers."""
    node_timeout: float = 600.0
    """Seconds one request may take in all, its retries and backoff included."""


class RequestsStopped(RuntimeError):
    """The process is stopping (Ctrl-C, ``kill``): no request is started or retried."""


_STOPPING = threading.Event()


def stop_requests() -> None:
    """Start and retry no more requests in this process (a stop signal came): every batch
    fails with :class:`RequestsStopped` at its next request, so the nodes still running end
    after the requests in flight instead of after their whole batches."""
    _STOPPING.set()


def allow_requests() -> None:
    """Undo :func:`stop_requests` (a new execution starts in this process)."""
    _STOPPING.clear()


def requests_stopped() -> bool:
    """True after :func:`stop_requests`."""
    return _STOPPING.is_set()


class EndpointError(RuntimeError):
    """An LLM call failed; says which role, URL and model, how often and how long it tried."""

    def __init__(
        self,
        role: str,
        endpoint: Endpoint,
        error: Exception,
        *,
        tries: int = 1,
        waited: float | None = None,
    ) -> None:
        self.role, self.endpoint, self.error = role, endpoint, error
        self.tries, self.waited = tries, waited
        where = f"the {role} endpoint {endpoint.base_url} (model {endpoint.model!r})"
        cause = f"{type(error).__name__}: {error}"
        spent = ""  # known only for the requests generate() made
        if waited is not None:
            spent = f" after {tries} tr{'y' if tries == 1 else 'ies'} in {_seconds(waited)}"
        if isinstance(error, openai.APITimeoutError):
            bound = (
                f" (at most {endpoint.timeout:g} s a try, {endpoint.node_timeout:g} s a "
                "request); check the server and resume"
                if waited is not None
                else ""
            )
            message = f"no answer from {where}{spent}{bound}"
        elif isinstance(error, openai.APIConnectionError):
            message = f"cannot reach {where}{spent}: {cause}"
        elif is_malformed(error):
            message = f"malformed answer (not a chat completion) from {where}{spent}: {cause}"
        else:
            message = f"error from {where}{spent if tries > 1 else ''}: {cause}"
        super().__init__(message)


class CircuitOpenError(EndpointError):
    """Most recent requests to a URL failed: the run stops (data kept) instead of retrying."""

    def __init__(self, role: str, endpoint: Endpoint, error: Exception, message: str) -> None:
        super().__init__(role, endpoint, error)
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def is_malformed(error: BaseException) -> bool:
    """True for a 200 answer that could not be read as a chat completion.

    The client and langchain-openai raise plain Python errors for those: invalid JSON
    (``JSONDecodeError``), ``choices: []`` (``IndexError``), ``choices: null`` (``TypeError``),
    an HTML page or a JSON list (``ValueError``), a choice without a message
    (``AttributeError``); the client's own validation raises ``APIResponseValidationError``.
    """
    if isinstance(error, openai.APIResponseValidationError):
        return True
    if isinstance(error, openai.APIError):
        return False
    return isinstance(error, ValueError | LookupError | TypeError | AttributeError)


def is_transient(error: BaseException) -> bool:
    """True for errors worth retrying: connection, rate limit, server (5xx), malformed answers.

    Timeouts are retried per request only, within ``node_timeout``: a node retry would wait
    for a hung server once more. A tripped circuit breaker stops the run.
    """
    if isinstance(error, CircuitOpenError):
        return False
    if isinstance(error, EndpointError):
        error = error.error
    if isinstance(error, openai.APITimeoutError):
        return False
    return _worth_a_retry(error)


def _worth_a_retry(error: BaseException) -> bool:
    """Per-request filter: transient errors, timeouts included, and malformed answers."""
    if isinstance(error, openai.APIConnectionError | openai.RateLimitError):
        return True  # APITimeoutError is a subclass of APIConnectionError
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409) or error.status_code >= 500
    return is_malformed(error)


NODE_RETRY = RetryPolicy(
    initial_interval=2.0, backoff_factor=2.0, max_attempts=3, retry_on=is_transient
)
"""Node-level retry: only transient endpoint errors; a 4xx, a timeout or a stop fails at once."""


# --- clients ----------------------------------------------------------------------------------


def client_options(endpoint: Endpoint) -> dict[str, Any]:
    """What every client of an endpoint is built with: its URL, the API key (read now from
    ``endpoint.api_key_env``, ``"EMPTY"`` when unset: vLLM takes any) and the timeout of a try."""
    return {
        "base_url": endpoint.base_url,
        "api_key": os.environ.get(endpoint.api_key_env) or "EMPTY",
        "timeout": endpoint.timeout,
    }


def openai_client(endpoint: Endpoint) -> openai.OpenAI:
    """An OpenAI client for an endpoint (:func:`client_options`); close it when done.

    It retries transient errors itself (``endpoint.max_retries``, exponential backoff); wrap
    what still fails in :class:`EndpointError` to name the endpoint.
    """
    return openai.OpenAI(**client_options(endpoint), max_retries=endpoint.max_retries)


@lru_cache(maxsize=64)
def _client(endpoint: Endpoint, api_key: str, params: tuple[tuple[str, Any], ...]) -> ChatOpenAI:
    options = client_options(endpoint) | {"api_key": api_key}  # the key the cache is keyed by
    return ChatOpenAI(
        model=endpoint.model,
        max_retries=0,  # retried by _Batch.ask, which also retries malformed answers
        **options,
        **dict(params),
    )


def _frozen(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))


def chat_model(endpoint: Endpoint, **params: Any) -> ChatOpenAI:
    """A (cached) `ChatOpenAI` for an endpoint and sampling parameters (temperature, stop, ...).

    It does not retry by itself: :func:`generate` does.
    """
    return _client(endpoint, client_options(endpoint)["api_key"], _frozen(params))


# --- the circuit breaker ----------------------------------------------------------------------


class ErrorRate:
    """Outcomes of the last :data:`BREAKER_WINDOW` tries of one run at one URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: deque[bool] = deque(maxlen=BREAKER_WINDOW)
        self.tripped_at = 0.0
        self.message = ""
        self.last_error: Exception | None = None
        """The failure that tripped the breaker last."""
        self._lock = threading.Lock()

    def record(self, error: Exception | None) -> str | None:
        """Count one try (``error=None``: it succeeded); the stop message if this trips it."""
        with self._lock:
            self.outcomes.append(error is None)
            failed = self.outcomes.count(False)
            full = len(self.outcomes) == BREAKER_WINDOW
            if error is None or not full or failed <= BREAKER_RATE * BREAKER_WINDOW:
                return None
            self.message = (
                f"stopped: {failed} of the last {BREAKER_WINDOW} requests to {self.url} failed "
                f"(last error: {type(error).__name__}: {error}); data kept; fix the server and "
                "resume"
            )
            self.tripped_at, self.last_error = time.monotonic(), error
            self.outcomes.clear()  # a resume starts counting again
            return self.message

    def tripped_since(self, started: float) -> str | None:
        """The stop message if the breaker tripped after ``started`` (a monotonic time)."""
        with self._lock:
            return self.message if self.tripped_at >= started else None


_BREAKERS: OrderedDict[tuple[str, str], ErrorRate] = OrderedDict()
_BREAKERS_LOCK = threading.Lock()


def error_rate(run: str, url: str) -> ErrorRate:
    """The circuit breaker of one run at one URL (the last 256 used are kept)."""
    with _BREAKERS_LOCK:
        breaker = _BREAKERS.get((run, url)) or ErrorRate(url)
        _BREAKERS[(run, url)] = breaker
        _BREAKERS.move_to_end((run, url))
        while len(_BREAKERS) > 256:
            _BREAKERS.popitem(last=False)
        return breaker


# --- answers kept from failed batches ---------------------------------------------------------

_KEPT: OrderedDict[str, AIMessage] = OrderedDict()
_KEPT_LOCK = threading.Lock()


def _answer_key(run: str, scope: str, endpoint: Endpoint, params: dict[str, Any], slot: int,
                request: Messages) -> str:
    """What determines one answer: run, scope, endpoint, sampling, slot in the batch and
    messages."""
    messages = [
        (m.type, m.content) if isinstance(m, BaseMessage) else tuple(m) for m in request
    ]
    where = (run, scope) if scope else run  # without a scope: the key it had before scopes
    text = repr((where, endpoint.base_url, endpoint.model, _frozen(params), slot, messages))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _kept(key: str) -> AIMessage | None:
    with _KEPT_LOCK:
        return _KEPT.get(key)


def _keep(key: str, answer: AIMessage) -> None:
    with _KEPT_LOCK:
        _KEPT[key] = answer
        while len(_KEPT) > _KEPT_MAX:
            _KEPT.popitem(last=False)


def _forget(keys: Sequence[str]) -> None:
    with _KEPT_LOCK:
        for key in keys:
            _KEPT.pop(key, None)


# --- requests ---------------------------------------------------------------------------------


class _Batch:
    """One :func:`generate` call: its model, breaker, and a flag that stops its retries."""

    def __init__(self, role: str, endpoint: Endpoint, model: ChatOpenAI, run: str) -> None:
        self.role, self.endpoint, self.model = role, endpoint, model
        self.breaker = error_rate(run, endpoint.base_url)
        self.started = time.monotonic()
        self.stop = threading.Event()
        """Set when a request of the batch failed for good: the others try no more."""
        self.failure: EndpointError | None = None
        """The batch's first request to fail for good."""
        self.circuit: CircuitOpenError | None = None
        """The batch's first stop by the circuit breaker (raised before any other failure)."""
        self._lock = threading.Lock()

    def ask(self, messages: Messages) -> AIMessage:
        """One request, tried until it is answered, fails for good, or its time is spent."""
        first = time.monotonic()
        deadline = first + self.endpoint.node_timeout
        tries = 0
        while True:
            if _STOPPING.is_set():
                raise RequestsStopped(f"{self.role}: the process is stopping")
            if stopped := self.breaker.tripped_since(self.started):  # by another node's calls
                error = self.breaker.last_error or RuntimeError(stopped)
                raise self._fail(CircuitOpenError(self.role, self.endpoint, error, stopped))
            tries += 1
            timeout = max(min(self.endpoint.timeout, deadline - time.monotonic()), 0.001)
            try:
                answer = self.model.invoke(messages, timeout=timeout)
            except Exception as error:  # noqa: BLE001 - classified below
                delay = self._after_failure(error, tries, first, deadline)
                if self.stop.wait(delay):  # another request of the batch failed for good
                    waited = time.monotonic() - first
                    raise EndpointError(
                        self.role, self.endpoint, error, tries=tries, waited=waited
                    ) from error
                continue
            self.breaker.record(None)
            return answer

    def _after_failure(self, error: Exception, tries: int, first: float, deadline: float) -> float:
        """Seconds to wait before the next try; raise when there is none."""
        stopped = self.breaker.record(error) or self.breaker.tripped_since(self.started)
        if stopped:
            raise self._fail(CircuitOpenError(self.role, self.endpoint, error, stopped)) from error
        now = time.monotonic()
        delay = _backoff(tries, error)
        if (
            not _worth_a_retry(error)
            or tries > self.endpoint.max_retries
            or now + delay >= deadline
            or self.stop.is_set()
        ):
            waited = now - first
            failure = EndpointError(self.role, self.endpoint, error, tries=tries, waited=waited)
            raise self._fail(failure) from error
        return delay

    def _fail(self, failure: EndpointError) -> EndpointError:
        """Record the batch's first failure (and stop the other requests' retries)."""
        with self._lock:
            if self.failure is None:
                self.failure = failure
            if self.circuit is None and isinstance(failure, CircuitOpenError):
                self.circuit = failure
        self.stop.set()
        return failure

    def first_failure(self, error: Exception) -> Exception:
        """What a failed batch raises: a stop by the breaker, else its first request to fail
        for good, else ``error`` (a failure of ``on_answer``, say)."""
        return self.circuit or self.failure or error


def _backoff(tries: int, error: BaseException) -> float:
    """The server's ``Retry-After`` (up to a minute), else exponential backoff with jitter."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            after = float(headers.get(name, "")) * scale
        except ValueError:
            continue
        if 0 < after <= RETRY_AFTER_MAX:
            return after
    return min(BACKOFF_START * 2.0 ** (tries - 1), BACKOFF_MAX) * (1 - 0.25 * random.random())


def generate(
    role: str,
    endpoint: Endpoint,
    requests: Sequence[Messages],
    *,
    max_concurrency: int = 32,
    run: str = "",
    scope: str = "",
    on_answer: Callable[[int, AIMessage], None] | None = None,
    **params: Any,
) -> list[AIMessage]:
    """Send many chat requests concurrently; raise :class:`EndpointError` if any fails.

    ``run`` names the run: it scopes the circuit breaker and the answers kept when the batch
    fails (a repeated call with the same requests re-sends only those that failed); ``scope``
    tells apart calls of one run that may send the same messages side by side (a generator
    task's round and index), so that one never takes another's kept answers.
    ``on_answer(index, answer)`` is called as each answer arrives (to store it at once).
    Requests run by :func:`map_concurrently`: when one fails for good, no other is started,
    the running ones stop retrying, and the first error (a stop by the circuit breaker before
    any other) is raised once they are done.
    """
    if not requests:
        return []
    batch = _Batch(role, endpoint, chat_model(endpoint, **params), run)
    keys = [_answer_key(run, scope, endpoint, params, i, r) for i, r in enumerate(requests)]

    def answer(index: int) -> AIMessage:
        got = _kept(keys[index]) or batch.ask(requests[index])
        _keep(keys[index], got)
        if on_answer is not None:
            on_answer(index, got)
        return got

    try:  # a failure, or Ctrl-C: start nothing more, retry nothing more (batch.stop)
        answers = map_in_order(
            answer, range(len(requests)), max_concurrency, on_stop=batch.stop.set
        )
    except Exception as error:
        first = batch.first_failure(error)
        raise first from first.__cause__  # shown as raised, not as raised while handling
    _forget(keys)
    return answers


# --- concurrency ------------------------------------------------------------------------------


def map_concurrently(
    fn: Callable[[T], R],
    items: Iterable[T],
    max_concurrency: int,
    *,
    on_stop: Callable[[], None] | None = None,
) -> Iterator[tuple[int, R]]:
    """Call ``fn`` on every item, at most ``max_concurrency`` calls at a time, and yield
    ``(index of the item, result)`` in the caller's thread as each call returns: the caller
    stores it (a cache line, a progress step) at once.

    The calls run on the process's long-lived pool for that bound (:func:`_executor`), each in
    a copy of the caller's context (LangGraph streaming and tracing see them as the caller's,
    as with ``Runnable.batch``). A single item is called in the caller's thread (Ctrl-C
    interrupts it directly). ``fn`` must not itself wait for calls on the same bound's pool.

    When a call fails, no item is started after it and ``on_stop`` is called (to make the
    running calls give up early); the results of the calls still running are yielded as they
    return, then the first error is raised. When the caller stops early (an error in its loop,
    Ctrl-C), nothing more is started, the calls not started are cancelled and ``on_stop`` is
    called; the running calls are not waited for.
    """
    items = list(items)
    if len(items) == 1:
        yield 0, fn(items[0])
        return
    feed = _Feed(fn, items, max(1, max_concurrency))
    finished = False
    try:
        error: BaseException | None = None
        for index, future in feed.start():
            if future.cancelled():
                continue
            if (failure := future.exception()) is None:
                yield index, future.result()
            elif error is None:
                error = failure
                if on_stop is not None:
                    on_stop()
        finished = True
    finally:
        if not finished:
            feed.abandon()
            if on_stop is not None:
                on_stop()
    if error is not None:
        raise error


def map_in_order(
    fn: Callable[[T], R],
    items: Iterable[T],
    max_concurrency: int,
    *,
    on_stop: Callable[[], None] | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` by :func:`map_concurrently` (same bound, errors and stop)."""
    items = list(items)
    results: list[Any] = [None] * len(items)
    for index, result in map_concurrently(fn, items, max_concurrency, on_stop=on_stop):
        results[index] = result
    return results


class _Feed(Generic[T, R]):
    """The calls of one :func:`map_concurrently`: the next item is submitted from the done
    callback of the call before it (the pool never waits for the caller), none after a call
    failed or the caller gave up; each done call is queued for the caller."""

    def __init__(self, fn: Callable[[T], R], items: Sequence[T], max_concurrency: int) -> None:
        self.fn, self.max_concurrency = fn, max_concurrency
        self.items = iter(enumerate(items))
        self.pool = _executor(max_concurrency)
        self.context = contextvars.copy_context()
        self.running: dict[Future[R], int] = {}
        self.outstanding = 0
        """Calls submitted whose result the caller has not taken yet."""
        self.stopped = False
        self.done: queue.SimpleQueue[tuple[int, Future[R]]] = queue.SimpleQueue()
        self.lock = threading.Lock()

    def start(self) -> Iterator[tuple[int, Future[R]]]:
        """Submit the first calls; yield every submitted call once it is done."""
        for _ in range(self.max_concurrency):
            self._submit_next()
        while True:
            with self.lock:
                if not self.outstanding:
                    return
                self.outstanding -= 1  # a call done is queued (or will be) for each one left
            yield self.done.get()

    def abandon(self) -> None:
        """Start nothing more and cancel the calls not started (their callbacks run here)."""
        with self.lock:
            self.stopped = True
            futures = list(self.running)
        for future in futures:
            future.cancel()

    def _submit_next(self) -> None:
        with self.lock:
            entry = None if self.stopped else next(self.items, None)
            if entry is None:
                return
            index, item = entry
            try:
                if _STOPPING.is_set():  # a stop signal: that item fails, nothing follows it
                    raise RequestsStopped("the process is stopping")
                future = self.pool.submit(self.context.copy().run, self.fn, item)
            except RuntimeError as exc:  # stopping, or the interpreter exiting: the item fails
                future = Future()
                future.set_exception(exc)
            self.running[future] = index
            self.outstanding += 1
        future.add_done_callback(self._finished)  # called at once if it is done already

    def _finished(self, future: Future[R]) -> None:
        with self.lock:
            index = self.running.pop(future)
            failed = future.cancelled() or future.exception() is not None
            self.stopped = self.stopped or failed  # decided before the next is submitted
        try:
            self._submit_next()
        finally:  # the caller waits for one entry per call
            self.done.put((index, future))


@lru_cache(maxsize=8)
def _executor(max_workers: int) -> ThreadPoolExecutor:
    """A long-lived pool per concurrency bound (a new pool per batch costs a thread per call)."""
    return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="llm")


def batch_progress(description: str, *, enabled: bool) -> Progress:
    """The progress bar of a batch (description, bar, done/total, elapsed time) on stderr;
    ``enabled=False`` draws nothing. Use it as a context manager: ``add_task``, ``advance``."""
    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def output_tokens(messages: Sequence[AIMessage]) -> int:
    """Completion tokens reported by the server for these answers."""
    return sum(m.usage_metadata.get("output_tokens", 0) if m.usage_metadata else 0
               for m in messages)
