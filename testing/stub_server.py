"""A deterministic OpenAI-compatible chat server on loopback, for tests and benchmarks.

:class:`StubServer` runs a small Starlette app under uvicorn in a background thread on
``127.0.0.1`` (a free port) and serves:

* ``GET /v1/models``: the configured model ids, in OpenAI list format;
* ``POST /v1/chat/completions``: a ``chat.completion`` (or, with ``"stream": true``, an SSE
  stream: one content chunk, a chunk with the finish reason, a usage chunk, ``data: [DONE]``);
* ``POST /v1/completions``: a ``text_completion`` with the text in ``choices[0].text``.

The answer text comes from a *handler*, ``handler(body) -> str``, called with the full request
body. The server then honours ``stop`` (the text is cut at the first occurrence of any stop
string) and ``max_tokens`` / ``max_completion_tokens`` (the text is cut after that many
whitespace-separated words). Tokens are whitespace-separated words, for ``usage`` as well.
A handler scripts an HTTP error for one request by raising :class:`StubHTTPError`; a queue of
status codes (``failures``) scripts errors for the next requests whatever the handler says.
The same queue takes the names of :data:`FAULTS` (a 200 with invalid JSON, with
``choices: []``, with an HTML page; a hang), and ``faults`` answers a seeded share of all
requests with an error or a fault, e.g. ``StubServer(faults={"html": 0.02, 503: 0.1})``.

Usage::

    with StubServer(latency=0.05, failures=[503]) as stub:
        llm = ChatOpenAI(base_url=stub.base_url, api_key="x", model="stub", max_retries=0)
        ...
        assert stub.status_counts[503] == 1

The default handler, :func:`data_advisor_handler`, answers the app's default prompt templates
(``graph/templates/*.txt``) with plausible, deterministic text, so that a whole Data Advisor run
can be driven without a model.

:data:`NODE_MARKERS`: the handler looks at the content of the last user message (or at the
``prompt`` of a ``/v1/completions`` request), right-stripped, and recognises the node that sent
it (:func:`recognise_node`) by these endings, the last line of each node's template
(``tests/test_stub_server.py`` checks them against the templates as the nodes render them):

* ``"Category:"`` (``weakness_critic``): a harm category name that is new, i.e. the first one of
  :data:`HARM_CATEGORIES` that is neither among the lines under "The dataset already covers
  these harm categories:" (each child of a ``Parent: child; child`` line counts) nor named
  after "other than" / "avoid" (nor shares half of its content words with one of those);
  ``"Category N"`` when the list is exhausted;
* ``"Request:"`` (``generator``, ``self_instruct_generator``): one harmful-looking request on one
  line, about the weakness after ``"about:"`` (``"general harm"`` without one); a process-wide
  counter makes every answer unique and not a near-duplicate of any other;
* ``"Categories:"`` (``weakness_critic_batch``): as many new categories as ``Name N harm
  categories`` asks for, one per line, each new as above and to the ones before it;
* ``"Updated summary:"`` (``summarizer``, ``summarizer_batch``): the lines under
  ``"Current summary:"`` (list markers removed) followed by each new category from
  ``category "X"``, one per line;
* ``"New lines:"`` (``summarizer_delta``): only the new categories, one per line;
* ``"Assessment:"`` (``prompt_judge``, the ``llm`` prompt judge): ``Harmful: no`` for about one
  prompt in five, else ``Harmful: yes`` and a Llama Guard 3 code, a CRC of the prompt after
  ``User request:`` (:func:`judge_verdict`);
* anything else (``responder``): a short refusal that offers safe information.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
import re
import socket
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Handler = Callable[[dict[str, Any]], str]
"""A function from the request body to the assistant's text."""

CATEGORY_MARKER = "Category:"
REQUEST_MARKER = "Request:"
SUMMARY_MARKER = "Updated summary:"
DELTA_MARKER = "New lines:"

CATEGORIES_MARKER = "Categories:"
JUDGE_MARKER = "Assessment:"

NODE_MARKERS: dict[str, str] = {
    "weakness_critic": CATEGORY_MARKER,
    "weakness_critic_batch": CATEGORIES_MARKER,
    "generator": REQUEST_MARKER,
    "self_instruct_generator": REQUEST_MARKER,
    "summarizer": SUMMARY_MARKER,
    "summarizer_batch": SUMMARY_MARKER,
    "summarizer_delta": DELTA_MARKER,
    "prompt_judge": JUDGE_MARKER,
}
"""The ending by which the stub recognises each template's node; the two generators are told
apart by the generator's ``about: {weakness}`` line, the two summarizers by the batch one's
``New data, N new categories`` line. Any other request is the responder's (its template is the
system prompt: the user message is a generated prompt)."""

_BATCH_DATA = re.compile(r"^New data, \d+ new categories", re.MULTILINE)
"""The ``summarizer_batch`` template's line before its new categories."""
_COUNT = re.compile(r"\bName (\d+) harm categories\b")
"""The ``weakness_critic_batch`` template's line saying how many categories it asks for."""

_ABOUT = re.compile(r"about:[ \t]*(.*)$", re.MULTILINE)
"""The generator template's line naming the weakness."""


FAULTS = ("invalid_json", "empty_choices", "html", "hang")
"""Scripted malformed answers (a 200 with a cut JSON body, with ``choices: []``, with an HTML
page) and a hang (no answer for ``hang_seconds``), by name."""


class StubHTTPError(Exception):
    """Raised by a handler to answer the request with an HTTP error instead of a completion."""

    def __init__(self, status: int, message: str = "") -> None:
        self.status = int(status)
        self.message = message or f"stub: scripted HTTP {self.status} error"
        super().__init__(f"HTTP {self.status}: {self.message}")


# --------------------------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9']+")
_NON_SPACE = re.compile(r"\S+")
_BULLET = re.compile(r"^\s*(?:[-*•]+|\d+[.)])\s*")
_STOPWORDS = frozenset("a an and the of to in on for or with by about from at as is are be".split())


def count_tokens(text: str) -> int:
    """Tokens as the stub counts them: whitespace-separated words."""
    return len(text.split())


def truncate_words(text: str, max_words: int) -> str:
    """``text`` up to the end of its ``max_words``-th word (line breaks inside are kept)."""
    if max_words <= 0:
        return ""
    for index, match in enumerate(_NON_SPACE.finditer(text), start=1):
        if index == max_words:
            return text[: match.end()]
    return text


def apply_stop(text: str, stop: str | Sequence[str] | None) -> str:
    """``text`` cut at the first occurrence of any of the stop strings."""
    if not stop:
        return text
    stops = [stop] if isinstance(stop, str) else [s for s in stop if s]
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def _content_text(content: Any) -> str:
    """The text of a message content: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return "" if content is None else str(content)


def last_user_text(body: dict[str, Any]) -> str:
    """Content of the last user message, or the ``prompt`` of a text completion request."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        prompt = prompt[-1] if prompt else ""
    return prompt if isinstance(prompt, str) else str(prompt)


def _prompt_text(body: dict[str, Any]) -> str:
    """All input text of a request (for ``usage.prompt_tokens``)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return "\n".join(_content_text(m.get("content")) for m in messages if isinstance(m, dict))
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return "\n".join(str(p) for p in prompt)
    return str(prompt)


def _content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS)


def _block_after(text: str, header: str) -> list[str]:
    """Non-empty lines after the line holding ``header``, up to the next blank line.

    List markers are removed and the ``(none yet)`` placeholder is dropped.
    """
    at = text.find(header)
    if at < 0:
        return []
    lines: list[str] = []
    for raw in text[at + len(header) :].split("\n")[1:]:
        if not raw.strip():
            break
        line = _BULLET.sub("", raw).strip()
        if line and line.lower() != "(none yet)":
            lines.append(line)
    return lines


# --------------------------------------------------------------------------------------------
# The Data Advisor handler
# --------------------------------------------------------------------------------------------

HARM_CATEGORIES: tuple[str, ...] = (
    "Election interference",
    "Animal cruelty",
    "Counterfeit currency",
    "Human trafficking",
    "Insider trading",
    "Tax evasion",
    "Money laundering",
    "Identity theft",
    "Stalking and surveillance",
    "Child exploitation",
    "Terrorist propaganda",
    "Extremist recruitment",
    "Academic dishonesty",
    "Copyright piracy",
    "Illegal waste dumping",
    "Wildlife poaching",
    "Arson attacks",
    "Bribery and corruption",
    "Voter suppression",
    "Dangerous medical advice",
    "Eating disorder promotion",
    "Predatory gambling schemes",
    "Price fixing cartels",
    "Workplace discrimination",
    "Deepfake pornography",
    "Contraband smuggling",
    "Prison escape planning",
    "Jury tampering",
    "Witness intimidation",
    "Extortion and blackmail",
    "Kidnapping for ransom",
    "Food supply poisoning",
    "Bioweapon development",
    "Nerve agent synthesis",
    "Nuclear material theft",
    "Critical infrastructure sabotage",
    "Aircraft tampering",
    "Carjacking methods",
    "Shoplifting tactics",
    "Pyramid schemes",
    "Illegal organ trade",
    "Underage drinking",
    "Drunk driving",
    "Dangerous viral challenges",
    "Cult indoctrination",
    "Religious persecution",
    "Sextortion of teenagers",
    "Elder abuse",
    "Intimate partner violence",
    "Unsafe childcare practices",
    "Forced labor",
    "Fake online reviews",
    "Astroturfing campaigns",
    "Research data fabrication",
    "Counterfeit pharmaceuticals",
    "Visa document forgery",
    "Loan sharking",
    "Hazing rituals",
    "Unsafe weight loss",
    "Antiquities looting",
    "Swatting hoaxes",
    "Software license cracking",
    "Corporate espionage",
    "Sanctions evasion",
    "Grave robbing",
)
"""The categories :func:`data_advisor_handler` names, in order; pairwise without shared words
beyond a third of their content words, and none overlapping the seed categories."""

_VERBS = (
    "secretly obtain",
    "quietly acquire",
    "covertly arrange",
    "cleverly fake",
    "discreetly organize",
    "anonymously sell",
    "illegally copy",
    "deliberately sabotage",
    "systematically exploit",
    "cheaply manufacture",
    "remotely control",
    "silently distribute",
    "aggressively promote",
    "carefully hide",
    "rapidly spread",
    "subtly manipulate",
    "openly trade",
)  # 17
_OBJECTS = (
    "forged paperwork",
    "stolen credentials",
    "hidden payments",
    "untraceable funds",
    "private records",
    "restricted materials",
    "borrowed identities",
    "unlabeled shipments",
    "encrypted messages",
    "rigged equipment",
    "bogus invoices",
    "cloned cards",
    "confidential blueprints",
    "unregistered vehicles",
    "doctored photos",
    "leaked passwords",
    "black-market goods",
    "tampered samples",
    "pirated software",
)  # 19
_PLACES = (
    "rural villages",
    "crowded stadiums",
    "university campuses",
    "online forums",
    "busy airports",
    "shipping ports",
    "suburban neighborhoods",
    "government offices",
    "hospital wards",
    "exclusive clubs",
    "border towns",
    "train stations",
    "corporate headquarters",
    "retail stores",
    "apartment complexes",
    "public schools",
    "farming regions",
    "coastal resorts",
    "industrial zones",
    "military bases",
    "religious centers",
    "tourist bazaars",
    "gaming arcades",
)  # 23
_SAFE_TIPS = (
    "trusted professionals, official guidance and local support services can address the "
    "underlying need safely and legally",
    "licensed experts, reputable public resources and community helplines offer lawful ways "
    "to handle this situation",
    "consider speaking with a qualified advisor or counselor who can suggest legal, safe "
    "options for your goal",
    "official websites, accredited organisations and support lines provide reliable help "
    "without putting anyone at risk",
)

_counter_lock = threading.Lock()
_counter = itertools.count(1)


def _next_count() -> int:
    with _counter_lock:
        return next(_counter)


def reset_request_counter(start: int = 1) -> None:
    """Restart the process-wide counter behind the generated requests (for reproducible runs)."""
    global _counter
    with _counter_lock:
        _counter = itertools.count(start)


def _avoid_text(prompt: str) -> str:
    """The text after an "other than" / "avoid" hint, up to the end of its sentence."""
    parts = []
    for match in re.finditer(r"(?:other than|avoid(?:ing)?)\b:?", prompt, re.IGNORECASE):
        tail = prompt[match.end() :].split("\n", 1)[0]
        parts.append(re.split(r"\.(?:\s|$)", tail, maxsplit=1)[0])
    return "\n".join(parts)


def _summary_items(line: str) -> list[str]:
    """The categories a summary line names: itself, or a group's (``Fraud: online; phone``)
    children, alone and with the parent's words."""
    label, sep, rest = line.partition(":")
    children = [c.strip() for c in rest.split(";") if c.strip()] if sep and ";" in rest else []
    return [*children, *(f"{c} {label.strip()}" for c in children)] if children else [line]


def novel_categories(prompt: str) -> str:
    """As many new categories as the batch critic prompt asks for (``Name N harm
    categories``), one per line, each new to the prompt and to the ones before it."""
    found = _COUNT.search(prompt)
    named: list[str] = []
    for _ in range(int(found.group(1)) if found else 1):
        named.append(novel_category(prompt, also=named))
    return "\n".join(named)


def novel_category(prompt: str, also: Sequence[str] = ()) -> str:
    """The first of :data:`HARM_CATEGORIES` that the critic prompt does not name already (nor
    ``also``)."""
    covered = [
        item
        for line in _block_after(prompt, "The dataset already covers these harm categories:")
        for item in _summary_items(line)
    ]
    avoid = "\n".join([_avoid_text(prompt), *also])
    avoided = [a.strip() for a in re.split(r"[,;\n]", avoid) if a.strip()]
    taken = [*covered, *avoided]
    taken_lower = {t.lower() for t in taken}
    taken_words = [_content_words(t) for t in taken]
    avoid_lower = avoid.lower()
    for category in HARM_CATEGORIES:
        own = _content_words(category)
        if category.lower() in taken_lower or category.lower() in avoid_lower:
            continue
        if any(words and len(own & words) / len(own | words) >= 0.5 for words in taken_words):
            continue
        return category
    number = 1
    while f"category {number}" in taken_lower or f"category {number}" in avoid_lower:
        number += 1
    return f"Category {number}"


def harmful_request(prompt: str) -> str:
    """A new one-line harmful-looking request about the prompt's weakness (unique per call)."""
    found = _ABOUT.findall(prompt)
    weakness = found[-1].strip().rstrip(".").strip() if found else ""
    n = _next_count()
    verb = _VERBS[n % len(_VERBS)]
    obj = _OBJECTS[n % len(_OBJECTS)]
    place = _PLACES[n % len(_PLACES)]
    return (
        f"How could someone {verb} {obj} related to {weakness or 'general harm'} "
        f"in {place} (case {n})?"
    )


def updated_summary(prompt: str) -> str:
    """The current summary's lines followed by the new categories (each ``category "X"``),
    one per line."""
    lines = _block_after(prompt, "Current summary:")
    for match in re.finditer(r'category\s+"([^"]*)"', prompt):
        new = match.group(1).strip()
        if new and new.lower() not in {line.lower() for line in lines}:
            lines.append(new)
    return "\n".join(lines)


def new_summary_lines(prompt: str) -> str:
    """The new categories (each ``category "X"``) not among the current summary's lines, one
    per line: what ``summarizer_delta`` asks for."""
    old = {line.lower() for line in _block_after(prompt, "Current summary:")}
    lines = updated_summary(prompt).splitlines()
    return "\n".join(line for line in lines if line.lower() not in old)


def safe_response(prompt: str) -> str:
    """A deterministic refusal that points to safe help (about 25 words)."""
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
    tip = _SAFE_TIPS[int(digest[:8], 16) % len(_SAFE_TIPS)]
    return f"I can't help with that, but here is some safe information: {tip} (ref {digest[:8]})."


_JUDGED = re.compile(r"^User request:[ \t]*(.*)$", re.MULTILINE)


def judge_verdict(prompt: str) -> str:
    """The ``llm`` judge's answer to its template: a deterministic function of the judged
    request (a CRC: one in five not harmful, the others in one of 14 categories)."""
    found = _JUDGED.search(prompt)
    code = zlib.crc32((found.group(1) if found else prompt).encode("utf-8"))
    if code % 5 == 0:
        return "Harmful: no\nCategory: none"
    return f"Harmful: yes\nCategory: S{code // 5 % 14 + 1}"


def recognise_node(text: str) -> str:
    """The node whose template ``text`` was rendered from (see :data:`NODE_MARKERS`);
    ``"responder"`` for anything not recognised."""
    text = text.rstrip()
    node = next((node for node, end in NODE_MARKERS.items() if text.endswith(end)), "responder")
    if node == "generator" and not _ABOUT.search(text):
        return "self_instruct_generator"
    if node == "summarizer" and _BATCH_DATA.search(text):
        return "summarizer_batch"
    return node


_ANSWERS: dict[str, Callable[[str], str]] = {
    "weakness_critic": novel_category,
    "weakness_critic_batch": novel_categories,
    "generator": harmful_request,
    "self_instruct_generator": harmful_request,
    "summarizer": updated_summary,
    "summarizer_batch": updated_summary,
    "summarizer_delta": new_summary_lines,
    "responder": safe_response,
    "prompt_judge": judge_verdict,
}


def data_advisor_handler(body: dict[str, Any]) -> str:
    """Answer the app's default prompt templates deterministically (see the module docstring)."""
    text = last_user_text(body).rstrip()
    return _ANSWERS[recognise_node(text)](text)


LLAMA_GUARD_CONVERSATION = re.compile(r"\n\nAgent: (.*?)\n\n<END CONVERSATION>", re.S)


def llama_guard_handler(body: dict[str, Any]) -> str:
    """Answer a Llama Guard 1 prompt like the model does: ``safe``, or ``unsafe`` and a
    category (O1-O6) on the next line. The verdict is a deterministic function of the Agent's
    response (a CRC of its text: about a third unsafe), so different responses get different,
    repeatable verdicts; an empty response is safe. Anything else gets ``safe``.
    """
    found = LLAMA_GUARD_CONVERSATION.search(last_user_text(body))
    response = found.group(1).strip() if found else ""
    if not response:
        return "safe"
    code = zlib.crc32(response.encode("utf-8"))
    return "safe" if code % 3 else f"unsafe\nO{code // 3 % 6 + 1}"


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------

_ERROR_KINDS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    408: ("timeout_error", "timeout"),
    409: ("conflict_error", "conflict"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """An OpenAI-style error body for an HTTP status."""
    kind, code = _ERROR_KINDS.get(
        status, ("server_error", "server_error") if status >= 500 else ("api_error", "error")
    )
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class StubServer:
    """A deterministic OpenAI-compatible server on ``127.0.0.1``, in a background thread.

    ``handler(body) -> str`` makes the assistant text (default :func:`data_advisor_handler`);
    ``latency`` seconds are awaited in every completion request (so concurrent requests
    overlap); ``failures`` is a queue of HTTP statuses or :data:`FAULTS` names: each completion
    request pops the first one and answers with that error or fault (a falsy entry means
    "answer normally"). ``faults`` maps statuses and fault names to the share of the other
    requests answered so (drawn from a ``random.Random(fault_seed)``), e.g.
    ``{"invalid_json": 0.02, 503: 0.1}``; a ``"hang"`` waits ``hang_seconds`` before answering.
    ``models`` are the ids ``GET /v1/models`` lists, ``roots`` the ``root`` (what the model
    was loaded from, as vLLM lists it) of some of them. ``requests`` records every completion
    request body received, ``status_counts`` counts the statuses of the error and completion
    responses, ``fault_counts`` the faults served by name, ``max_in_flight`` the most completion
    requests it answered at once; all of them, ``failures`` and ``faults`` may be read or
    changed while the server runs.
    """

    def __init__(
        self,
        handler: Handler | None = None,
        latency: float = 0.0,
        failures: list[int | str] | None = None,
        models: Sequence[str] = ("stub",),
        faults: dict[str | int, float] | None = None,
        fault_seed: int = 0,
        hang_seconds: float = 30.0,
        roots: dict[str, str] | None = None,
    ) -> None:
        self.roots: dict[str, str] = dict(roots or {})
        self.handler: Handler = handler or data_advisor_handler
        self.faults: dict[str | int, float] = dict(faults or {})
        self.hang_seconds = float(hang_seconds)
        self.fault_counts: Counter[str] = Counter()
        self._fault_rng = random.Random(fault_seed)
        self.latency = float(latency)
        self.failures: list[int | str] = list(failures or [])
        self.models: list[str] = list(models) or ["stub"]
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        """Headers of each recorded request (lower-case names), parallel to ``requests``."""
        self.status_counts: Counter[int] = Counter()
        self.in_flight = 0
        """Completion requests being answered now."""
        self.max_in_flight = 0
        """The most completion requests answered at once so far."""
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.port: int | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/models", self._list_models, methods=["GET"]),
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
            ]
        )

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:PORT/v1``."""
        if self.port is None:
            raise RuntimeError("StubServer is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> StubServer:
        """Start serving (returns once the server accepts connections); returns ``self``."""
        if self._thread is not None:
            return self
        self._socket = _free_socket()
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=5,
        )
        self._server = uvicorn.Server(config)
        sockets = [self._socket]
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": sockets}, name="stub-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if not self._thread.is_alive():
                self._cleanup()
                raise RuntimeError("StubServer failed to start")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("StubServer did not start within 10 s")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout=5.0)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- endpoints -----------------------------------------------------------------------------

    async def _list_models(self, request: Request) -> Response:
        created = int(time.time())
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "stub",
             **({"root": self.roots[m]} if m in self.roots else {})}
            for m in self.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _chat_completions(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def _completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    def _error(self, status: int, message: str) -> Response:
        headers = {}
        if status in (408, 409, 429) or status >= 500:
            # retry-after: 0 alone makes the openai client fall back to its backoff (0.5 s+);
            # retry-after-ms: 1 makes it retry after a millisecond.
            headers = {"retry-after": "0", "retry-after-ms": "1"}
        self._count(status)
        return JSONResponse(error_body(status, message), status_code=status, headers=headers)

    def _count(self, status: int) -> None:
        with self._lock:
            self.status_counts[status] += 1

    def _pop_failure(self) -> int | str | None:
        with self._lock:
            if self.failures:
                return self.failures.pop(0)
            draw = self._fault_rng.random() if self.faults else 1.0
            for fault, share in self.faults.items():
                if draw < share:
                    return fault
                draw -= share
            return None

    async def _fault(self, fault: int | str) -> Response | None:
        """The response of a scripted fault (``None``: answer normally, after a hang)."""
        if isinstance(fault, int) or str(fault).isdigit():
            return self._error(int(fault), f"stub: scripted HTTP {int(fault)} error")
        if fault not in FAULTS:
            return self._error(500, f"stub: unknown fault {fault!r}; use a status or {FAULTS}")
        with self._lock:
            self.fault_counts[fault] += 1
        if fault == "hang":
            until = time.monotonic() + self.hang_seconds
            while time.monotonic() < until and not (self._server and self._server.should_exit):
                await asyncio.sleep(0.02)  # in steps: stopping the server ends a hang
            return None
        if fault == "empty_choices":
            body = {"id": "chatcmpl-empty", "object": "chat.completion", "created": 0,
                    "model": self.models[0], "choices": []}
            return JSONResponse(body)
        if fault == "invalid_json":
            cut = '{"id": "chatcmpl-cut", "choices": [{"index'
            return Response(cut, media_type="application/json")
        return Response(
            "<html><body><h1>502 Bad Gateway</h1>nginx</body></html>", media_type="text/html"
        )

    async def _complete(self, request: Request, *, chat: bool) -> Response:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, chat=chat)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _answer(self, request: Request, *, chat: bool) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._error(400, "stub: the request body is not a JSON object")
        with self._lock:
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        failure = self._pop_failure()
        if failure and (faulty := await self._fault(failure)) is not None:
            return faulty
        if chat and not isinstance(body.get("messages"), list):
            return self._error(400, "stub: 'messages' must be a list")
        n = body.get("n") or 1
        texts: list[str] = []
        try:
            for _ in range(max(1, int(n))):
                texts.append(self._shape(self.handler(body), body))
        except StubHTTPError as exc:
            return self._error(exc.status, exc.message)
        except Exception as exc:  # a handler bug: answer 500 like a broken server would
            return self._error(500, f"stub: handler failed: {type(exc).__name__}: {exc}")
        prompt_tokens = count_tokens(_prompt_text(body))
        completion_tokens = sum(count_tokens(t) for t in texts)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        model = str(body.get("model") or self.models[0])
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        self._count(200)
        if body.get("stream"):
            events = _stream_events(
                texts, usage, model=model, ident=ident, created=created, chat=chat
            )
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"cache-control": "no-cache"}
            )
        if chat:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": t},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                for i, t in enumerate(texts)
            ]
        else:
            choices = [
                {"index": i, "text": t, "logprobs": None, "finish_reason": "stop"}
                for i, t in enumerate(texts)
            ]
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
                "system_fingerprint": "stub",
            }
        )

    @staticmethod
    def _shape(text: str, body: dict[str, Any]) -> str:
        text = apply_stop(str(text), body.get("stop"))
        given = [body.get(k) for k in ("max_tokens", "max_completion_tokens")]
        limits = [int(v) for v in given if isinstance(v, int | float) and not isinstance(v, bool)]
        return truncate_words(text, min(limits)) if limits else text


async def _stream_events(
    texts: list[str], usage: dict[str, int], *, model: str, ident: str, created: int, chat: bool
) -> AsyncIterator[bytes]:
    """SSE events: a content chunk per choice, a finish chunk per choice, usage, ``[DONE]``."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": ident,
            "object": kind,
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    for i, text in enumerate(texts):
        if chat:
            delta = {"role": "assistant", "content": text}
            yield event([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
        else:
            yield event([{"index": i, "text": text, "logprobs": None, "finish_reason": None}])
    for i in range(len(texts)):
        if chat:
            yield event([{"index": i, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
        else:
            yield event([{"index": i, "text": "", "logprobs": None, "finish_reason": "stop"}])
    yield event([], usage=usage)
    yield b"data: [DONE]\n\n"
