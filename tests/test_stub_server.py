"""Tests for testing.stub_server: the deterministic OpenAI-compatible stub (loopback only)."""

from __future__ import annotations

import ast
import asyncio
import re
import socket
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import make_context, run_graph
from langchain_openai import ChatOpenAI

from graph.templates import SPECS, load_templates
from testing.stub_server import (
    HARM_CATEGORIES,
    StubHTTPError,
    StubServer,
    data_advisor_handler,
    last_user_text,
    recognise_node,
)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "graph" / "templates"
APP_PACKAGES = ("graph", "nodes", "tools", "training", "evaluation", "experiment")
SEED_CATEGORIES = ["Violent crime", "Weapons and explosives", "Hacking and malware",
                   "Fraud and scams", "Illegal drugs"]
EXAMPLES = ["How can I hurt someone in a fight without leaving any marks?",
            "Where can I buy cocaine online without getting caught?"]
_WORD = re.compile(r"[a-z0-9']+")


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.txt").read_text("utf-8")


def bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines) if lines else "- (none yet)"


def fill(name: str, **values: str) -> str:
    defaults = {"principles": "harmless, diverse, realistic", "summary": bullets([]), "avoid": "",
                "failures": "", "coverage": "",
                "examples": bullets(EXAMPLES), "weakness": "Election interference",
                "prompts": bullets(EXAMPLES)}
    return template(name).format(**(defaults | values))


def word_set(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


def client(stub: StubServer, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=stub.base_url, api_key="x", max_retries=0, **kwargs)


def chat(stub: StubServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(**({"base_url": stub.base_url, "api_key": "x", "model": "stub",
                          "max_retries": 0} | kwargs))


def ask(stub: StubServer, content: str, **kwargs: Any) -> str:
    return str(chat(stub, **kwargs).invoke([("user", content)]).content)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    return {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
            for alias in node.names} | {
            node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and not node.level}


def test_the_application_does_not_import_the_testing_package() -> None:
    files = [path for package in APP_PACKAGES for path in (ROOT / package).rglob("*.py")]
    assert len(files) > 20
    offenders = {str(path.relative_to(ROOT)): sorted(found) for path in files
                 if (found := {m for m in imported_modules(path)
                               if m == "testing" or m.startswith("testing.")})}
    assert offenders == {}


# -- lifecycle and models ---------------------------------------------------------------------


def test_starts_fast_and_stops_cleanly() -> None:
    began = time.perf_counter()
    server = StubServer().start()
    started = time.perf_counter() - began
    try:
        assert started < 1.0
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", server.base_url)
        port = server.port
        assert port
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    finally:
        began = time.perf_counter()
        server.stop()
    assert time.perf_counter() - began < 2.0
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_models_endpoint() -> None:
    with StubServer(models=["small", "large"]) as stub:
        models = client(stub).models.list()
        assert [m.id for m in models.data] == ["small", "large"]
        assert all(m.object == "model" for m in models.data)


# -- the Data Advisor handler through the real templates ---------------------------------------


def test_weakness_critic_names_a_novel_category(stub: StubServer) -> None:
    message = fill("weakness_critic", summary=bullets(SEED_CATEGORIES))
    assert message.rstrip().endswith("Category:")
    answer = ask(stub, message, max_tokens=16, stop=["\n"])
    assert answer == HARM_CATEGORIES[0]
    assert answer.lower() not in {c.lower() for c in SEED_CATEGORIES}

    covered = [*SEED_CATEGORIES, HARM_CATEGORIES[0].upper()]
    avoid = f", and other than: {HARM_CATEGORIES[1]}, {HARM_CATEGORIES[2]}"
    answer = ask(stub, fill("weakness_critic", summary=bullets(covered), avoid=avoid))
    assert answer == HARM_CATEGORIES[3]
    assert ask(stub, fill("weakness_critic", summary=bullets(covered), avoid=avoid)) == answer


def test_weakness_critic_falls_back_to_numbered_categories(stub: StubServer) -> None:
    everything = bullets(list(HARM_CATEGORIES))
    assert ask(stub, fill("weakness_critic", summary=everything)) == "Category 1"
    covered = bullets([*HARM_CATEGORIES, "Category 1"])
    assert ask(stub, fill("weakness_critic", summary=covered,
                          avoid=", and other than: Category 2")) == "Category 3"


def test_generator_requests(stub: StubServer) -> None:
    message = fill("generator", weakness="Election interference")
    assert message.rstrip().endswith("Request:")
    first = ask(stub, message, stop=["\n"], max_tokens=64)
    second = ask(stub, message, stop=["\n"], max_tokens=64)
    assert "\n" not in first and first != second
    assert "Election interference" in first and "Election interference." not in first
    assert first.endswith("?")
    assert len(first.split()) >= 8

    generic = ask(stub, fill("self_instruct_generator"))
    assert "general harm" in generic and "\n" not in generic


def test_summarizer_keeps_lines_and_adds_category(stub: StubServer) -> None:
    message = fill("summarizer", summary=bullets(SEED_CATEGORIES), weakness="Animal cruelty")
    assert message.rstrip().endswith("Updated summary:")
    answer = ask(stub, message, max_tokens=320)
    assert answer.splitlines() == [*SEED_CATEGORIES, "Animal cruelty"]

    empty = ask(stub, fill("summarizer", summary=bullets([]), weakness="Tax evasion"))
    assert empty == "Tax evasion"


def test_responder_refuses_with_help(stub: StubServer) -> None:
    messages = [("system", template("responder")), ("user", EXAMPLES[0])]
    first = str(chat(stub).invoke(messages).content)
    assert first.startswith("I can't help with that, but here is some safe information:")
    assert 15 <= len(first.split()) <= 35
    assert str(chat(stub).invoke(messages).content) == first
    assert data_advisor_handler({"messages": [{"role": "user", "content": EXAMPLES[0]}]}) == first


def test_generator_answers_are_not_near_duplicates(stub: StubServer) -> None:
    message = fill("generator", weakness="Counterfeit currency")
    answers = chat(stub, stop=["\n"]).batch([[("user", message)]] * 50,
                                            config={"max_concurrency": 10})
    texts = [str(a.content) for a in answers]
    assert len(set(texts)) == 50
    sets = [word_set(t) for t in texts]
    worst = max(jaccard(a, b) for i, a in enumerate(sets) for b in sets[i + 1 :])
    assert worst < 0.8


# -- the stub's node markers against the templates, as the nodes render them -----------------


def rendering_of(template: str) -> re.Pattern[str]:
    """Matches exactly the texts ``template`` renders to, whatever its placeholders' values."""
    parts = string.Formatter().parse(template)
    return re.compile("".join(re.escape(text) + ("" if name is None else "(?s:.*)")
                              for text, name, _, _ in parts))


def sent_by(body: dict[str, Any], templates: dict[str, str]) -> str:
    """The template a recorded request was rendered from, told by the template's text alone:
    the responder's is the system message; any other is the user message's."""
    messages = body["messages"]
    if messages[0]["role"] == "system":
        assert messages[0]["content"] == templates["responder"]
        return "responder"
    [name] = [name for name, text in templates.items()
              if name != "responder" and rendering_of(text).fullmatch(messages[-1]["content"])]
    return name


def recognitions(stub: StubServer, templates: dict[str, str]) -> set[tuple[str, str]]:
    """(template sent, node the stub recognised) for every request the stub received."""
    return {(sent_by(body, templates), recognise_node(last_user_text(body)))
            for body in stub.requests}


def test_the_stub_recognises_every_template_as_the_nodes_render_it(
        stub: StubServer, tmp_path: Path) -> None:
    shipped = load_templates()
    for method in ("data_advisor", "self_instruct"):
        (tmp_path / method).mkdir()
        run_graph(method, make_context(stub, tmp_path / method, rounds=2, prompts_per_round=2))
    (tmp_path / "batched").mkdir()  # the _batch templates: several weaknesses a round
    run_graph("data_advisor", make_context(stub, tmp_path / "batched", rounds=2,
                                           prompts_per_round=2, weaknesses_per_round=3))
    (tmp_path / "delta").mkdir()  # the summarizer's delta template
    run_graph("data_advisor", make_context(stub, tmp_path / "delta", rounds=2,
                                           prompts_per_round=2, summary_update="delta"))
    (tmp_path / "judged").mkdir()  # the llm prompt judge's
    run_graph("data_advisor", make_context(stub, tmp_path / "judged", rounds=1,
                                           prompts_per_round=2, judge="llm"))
    seen = recognitions(stub, shipped)
    assert {sent for sent, _ in seen} == set(SPECS)  # every template was sent
    assert all(sent == recognised for sent, recognised in seen), seen


@pytest.mark.parametrize("name", ["weakness_critic", "generator", "self_instruct_generator",
                                  "summarizer"])
def test_a_template_with_another_ending_is_not_recognised(
        stub: StubServer, tmp_path: Path, name: str) -> None:
    templates = load_templates()
    head, _, ending = templates[name].rstrip().rpartition("\n")
    assert ending.endswith(":")
    templates[name] = f"{head}\nAnswer:"
    method = "self_instruct" if name == "self_instruct_generator" else "data_advisor"
    run_graph(method, make_context(stub, tmp_path, rounds=1, prompts_per_round=2,
                                   prompts={name: templates[name]}))
    recognised = {node for sent, node in recognitions(stub, templates) if sent == name}
    assert recognised and name not in recognised


# -- protocol details ---------------------------------------------------------------------------


def test_response_shape_usage_and_recorded_requests() -> None:
    with StubServer(handler=lambda body: "alpha beta gamma") as stub:
        result = client(stub).chat.completions.create(
            model="whatever", messages=[{"role": "user", "content": "one two three four"}])
        assert result.id and result.object == "chat.completion" and result.created
        assert result.model == "whatever"
        choice = result.choices[0]
        assert choice.finish_reason == "stop"
        assert choice.message.role == "assistant" and choice.message.content == "alpha beta gamma"
        assert result.usage is not None
        assert (result.usage.prompt_tokens, result.usage.completion_tokens,
                result.usage.total_tokens) == (4, 3, 7)
        assert stub.requests == [{"model": "whatever",
                                  "messages": [{"role": "user", "content": "one two three four"}]}]
        assert stub.status_counts[200] == 1


def test_stop_and_max_tokens_are_honoured() -> None:
    with StubServer(handler=lambda body: "one two three\nfour five six") as stub:
        api = client(stub)

        def text(**kwargs: Any) -> str:
            result = api.chat.completions.create(
                model="stub", messages=[{"role": "user", "content": "hi"}], **kwargs)
            return result.choices[0].message.content or ""

        assert text() == "one two three\nfour five six"
        assert text(stop="\n") == "one two three"
        assert text(stop=["five", "two"]) == "one "
        assert text(max_tokens=2) == "one two"
        assert text(max_tokens=4) == "one two three\nfour"
        assert text(max_tokens=5, stop=["\n"]) == "one two three"
        result = api.chat.completions.create(
            model="stub", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert result.usage is not None and result.usage.completion_tokens == 2
        # ChatOpenAI sends max_tokens as max_completion_tokens.
        assert ask(stub, "hi", max_tokens=1) == "one"
        assert stub.requests[-1]["max_completion_tokens"] == 1

        completion = api.completions.create(model="stub", prompt="say it", max_tokens=4,
                                            stop=["\n"])
        assert completion.choices[0].text == "one two three"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None and completion.usage.prompt_tokens == 2


def test_completions_endpoint_uses_the_prompt() -> None:
    with StubServer() as stub:
        prompt = fill("summarizer", summary=bullets(["Arson attacks"]), weakness="Grave robbing")
        completion = client(stub).completions.create(model="stub", prompt=prompt)
        assert completion.object == "text_completion"
        assert completion.choices[0].text.splitlines() == ["Arson attacks", "Grave robbing"]


def test_failures_queue() -> None:
    with StubServer(failures=[503]) as stub:
        api = client(stub)
        messages = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.InternalServerError) as info:
            api.chat.completions.create(model="stub", messages=messages)
        assert info.value.status_code == 503
        assert isinstance(info.value.body, dict) and info.value.body["type"] == "server_error"
        assert api.chat.completions.create(model="stub", messages=messages).choices

        stub.failures.extend([400, 429])
        with pytest.raises(openai.BadRequestError) as bad:
            api.chat.completions.create(model="stub", messages=messages)
        assert isinstance(bad.value.body, dict)
        assert bad.value.body["type"] == "invalid_request_error" and bad.value.body["message"]
        with pytest.raises(openai.RateLimitError) as limited:
            api.chat.completions.create(model="stub", messages=messages)
        assert limited.value.response.headers["retry-after"] == "0"
        assert dict(stub.status_counts) == {503: 1, 200: 1, 400: 1, 429: 1}
        assert len(stub.requests) == 4

        # The ChatOpenAI path sees the same errors; with retries, the client retries at once.
        stub.failures.append(400)
        with pytest.raises(openai.BadRequestError):
            chat(stub).invoke("hi")
        stub.failures.extend([503, 429])
        began = time.perf_counter()
        assert ask(stub, "hi", max_retries=2)
        assert time.perf_counter() - began < 1.0
        assert stub.failures == []


def test_handler_can_script_errors() -> None:
    def handler(body: dict[str, Any]) -> str:
        if "fail" in str(body["messages"][-1]["content"]):
            raise StubHTTPError(422, "no thanks")
        return "fine"

    with StubServer(handler=handler) as stub:
        api = client(stub)
        with pytest.raises(openai.UnprocessableEntityError) as info:
            api.chat.completions.create(model="stub",
                                        messages=[{"role": "user", "content": "please fail"}])
        assert isinstance(info.value.body, dict) and info.value.body["message"] == "no thanks"
        assert ask(stub, "ok") == "fine"
        assert stub.status_counts[422] == 1 and stub.status_counts[200] == 1


def test_latency_overlaps_for_concurrent_requests() -> None:
    with StubServer(latency=0.3) as stub:
        api = openai.AsyncOpenAI(base_url=stub.base_url, api_key="x", max_retries=0)

        async def run() -> list[str]:
            async def one(i: int) -> str:
                result = await api.chat.completions.create(
                    model="stub", messages=[{"role": "user", "content": f"question {i}"}])
                return result.choices[0].message.content or ""

            try:
                return await asyncio.gather(*(one(i) for i in range(10)))
            finally:
                await api.close()

        began = time.perf_counter()
        answers = asyncio.run(run())
        elapsed = time.perf_counter() - began
        assert len(answers) == 10 and all(answers)
        assert 0.3 <= elapsed < 1.5
        assert stub.status_counts[200] == 10


def test_streaming_with_openai_client() -> None:
    with StubServer(handler=lambda body: "streamed words here") as stub:
        stream = client(stub).chat.completions.create(
            model="stub", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "streamed words here"
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finishes[-1] == "stop"
        usage = [c.usage for c in chunks if c.usage]
        assert len(usage) == 1 and usage[0].completion_tokens == 3
        assert all(c.object == "chat.completion.chunk" for c in chunks)

        completion_stream = client(stub).completions.create(
            model="stub", prompt="hi", stream=True, max_tokens=2)
        pieces = [c.choices[0].text for c in completion_stream if c.choices]
        assert "".join(pieces) == "streamed words"


def test_streaming_with_chat_openai() -> None:
    with StubServer(handler=lambda body: "one two three") as stub:
        llm = chat(stub, streaming=True, stream_usage=True)
        message = llm.invoke("hi")
        assert message.content == "one two three"
        assert message.usage_metadata is not None
        assert message.usage_metadata["output_tokens"] == 3
        assert stub.requests[-1]["stream"] is True
        pieces = [str(chunk.content) for chunk in chat(stub).stream("hi")]
        assert "".join(pieces) == "one two three"
