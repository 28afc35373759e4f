"""Tests for evaluation.utility: MMLU scoring by letter log-likelihood and by generation.

The transformers backend runs on a tiny randomly initialised Llama built from a config, with the
(locally cached) SmolLM2 tokenizer; nothing is downloaded. The endpoint backend runs against the
loopback stub, extended here to answer ``/v1/completions`` with top log-probs like vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from evaluation.data import MultipleChoice
from evaluation.utility import (
    LETTERS,
    evaluate_utility,
    letter_from_logprobs,
    letter_logprobs_transformers,
    letter_token_ids,
    parse_letter,
    score_by_generation,
    score_with_endpoint,
    score_with_transformers,
)
from testing.stub_server import StubServer
from tools.llm import Endpoint, EndpointError

SUMMARY_KEYS = {"kind", "dataset", "label", "model", "adapter", "method", "backend", "settings",
                "n", "accuracy", "unparsed", "per_subject", "model_identity", "serving",
                "dataset_sha256", "cache_key", "predictions_file"}


def make_items(answers: str, subjects: tuple[str, ...] = ("anatomy", "virology")) -> list[
        MultipleChoice]:
    items = []
    for i, answer in enumerate(answers):
        extra = " and more words" * (i % 3)  # different lengths: real left padding
        prompt = (f"The following are multiple choice questions (with answers) about "
                  f"{subjects[i % len(subjects)]}.\n\nQuestion {i}{extra}?\nA. one\nB. two\n"
                  f"C. three\nD. four\nAnswer:")
        items.append(MultipleChoice(f"mmlu-{i}", subjects[i % len(subjects)], prompt, answer))
    return items


# -- transformers backend on a tiny model --------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from tools.default_model import ensure_default_model

    return AutoTokenizer.from_pretrained(ensure_default_model())


@pytest.fixture(scope="module")
def tiny_dir(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def prefer(model: Any, token_id: int) -> Any:
    """Make the model always predict ``token_id`` next: zero lm_head weights, a bias on it."""
    hidden, vocab = model.lm_head.in_features, model.lm_head.out_features
    head = torch.nn.Linear(hidden, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 10.0
    model.lm_head = head
    return model


def test_letter_tokens_of_smollm2(tokenizer: Any) -> None:
    ids = letter_token_ids(tokenizer)
    assert ids == [tokenizer.encode(f" {x}", add_special_tokens=False)[0] for x in LETTERS]
    assert [tokenizer.decode([i]) for i in ids] == [" A", " B", " C", " D"]


def test_transformers_letters_and_batching(tiny_dir: Path, tokenizer: Any) -> None:
    items = make_items("ABCDABC")
    one = letter_logprobs_transformers(items, str(tiny_dir), batch_size=1)
    batched = letter_logprobs_transformers(items, str(tiny_dir), batch_size=4)
    assert len(one) == len(items) and all(len(row) == 4 for row in one)
    assert all(v < 0 for row in one for v in row)
    # Left padding with per-row positions scores a prompt exactly as alone.
    assert torch.allclose(torch.tensor(one), torch.tensor(batched), atol=1e-4)
    letters = score_with_transformers(items, str(tiny_dir), batch_size=3)
    assert len(letters) == len(items) and set(letters) <= set(LETTERS)
    best = [LETTERS[max(range(4), key=row.__getitem__)] for row in one]
    assert letters == best


def test_transformers_model_preferring_b_is_right_on_b(tiny_dir: Path, tokenizer: Any) -> None:
    from transformers import AutoModelForCausalLM

    b_id = tokenizer.encode(" B", add_special_tokens=False)[0]
    model = prefer(AutoModelForCausalLM.from_pretrained(tiny_dir), b_id)
    items = make_items("BBBBB")
    assert score_with_transformers(items, model, tokenizer, batch_size=2) == ["B"] * 5

    summary = evaluate_utility(make_items("BBBAC"), backend="transformers", label="tiny",
                               model=model, tokenizer=tokenizer, out_dir=tiny_dir / "res",
                               progress=False)
    assert summary["accuracy"] == pytest.approx(0.6) and summary["unparsed"] == 0
    assert summary["model"] == str(tiny_dir) and summary["backend"] == "transformers"


def test_transformers_with_peft_adapter(tiny_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    items = make_items("ABCD")
    plain = letter_logprobs_transformers(items, str(tiny_dir))
    adapted = letter_logprobs_transformers(items, str(tiny_dir), adapter=str(tmp_path / "adapter"))
    assert not torch.allclose(torch.tensor(plain), torch.tensor(adapted), atol=1e-5)


def test_transformers_generate_path(tiny_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    b_id = tokenizer.encode(" B", add_special_tokens=False)[0]
    model = prefer(AutoModelForCausalLM.from_pretrained(tiny_dir), b_id)
    summary = evaluate_utility(make_items("BBA"), backend="transformers", method="generate",
                               label="gen", model=model, tokenizer=tokenizer, out_dir=tmp_path,
                               max_tokens=2, progress=False)
    assert summary["accuracy"] == pytest.approx(2 / 3) and summary["method"] == "generate"


# -- parsing -----------------------------------------------------------------------------------


def test_parsing_helpers() -> None:
    assert parse_letter(" B. 8") == "B"
    assert parse_letter("The answer is (C)") == "C"
    assert parse_letter("Dogs and cats") is None
    assert parse_letter("") is None and parse_letter(None) is None
    top = {" A": -2.0, "A": -1.5, " B": -1.0, "\n": -0.1, " Dog": -0.5}
    assert letter_from_logprobs(top, "\n") == "B"
    assert letter_from_logprobs({"\n": -0.1, " The": -1.0}, "\n") is None
    assert letter_from_logprobs({"(": -0.1}, "(D") == "D"  # fallback: the generated token
    assert letter_from_logprobs(None, " C") == "C"


# -- endpoint backend against the stub ---------------------------------------------------------


class LogprobStub(StubServer):
    """The stub, answering ``/v1/completions`` like vLLM with ``logprobs``: top log-probs of the
    first token, from ``script(prompt) -> (text, {token: logprob})``."""

    def __init__(self, script: Callable[[str], tuple[str, dict[str, float]]], **kwargs: Any):
        super().__init__(**kwargs)
        self.script = script

    async def _completions(self, request: Request) -> Response:
        body = json.loads(await request.body())
        with self._lock:
            self.requests.append(body)
        failure = self._pop_failure()
        if failure:
            return self._error(int(failure), "stub: scripted failure")
        text, top = self.script(body["prompt"])
        if body.get("max_tokens") == 1:
            text = text[:2]
        logprobs = None
        if body.get("logprobs"):
            top = dict(sorted(top.items(), key=lambda kv: -kv[1])[: int(body["logprobs"])])
            logprobs = {"tokens": [text], "token_logprobs": [max(top.values(), default=0.0)],
                        "top_logprobs": [top], "text_offset": [0]}
        self._count(200)
        return JSONResponse({
            "id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "text": text, "logprobs": logprobs,
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })


def scripted(prompt: str) -> tuple[str, dict[str, float]]:
    """Question i: best letter LETTERS[i % 4]; every 5th has no letter in the top log-probs
    (fallback to the text "\\n" -> unparsed), every 7th has only a letter in the text."""
    i = int(prompt.split("Question ")[1].split("?")[0].split(" ")[0])
    letter = LETTERS[i % 4]
    if i % 5 == 4:
        return "\n", {"\n": -0.2, " The": -1.9}
    if i % 7 == 6:
        return f"{letter}.", {f"{letter}.": -0.3, "\n": -1.0}
    top = {f" {x}": -3.0 - k for k, x in enumerate(LETTERS)}
    top[f" {letter}"] = -0.5
    top[letter] = -0.9  # same letter without the space: still that letter
    top["\n"] = -0.7
    return f" {letter}", top


@pytest.fixture
def logprob_stub() -> Iterator[LogprobStub]:
    with LogprobStub(scripted) as server:
        yield server


def endpoint(stub: StubServer) -> Endpoint:
    return Endpoint(stub.base_url, "stub", timeout=10.0, max_retries=2)


def expected(i: int) -> str | None:
    return None if i % 5 == 4 else LETTERS[i % 4]


def test_endpoint_scoring_uses_top_logprobs(logprob_stub: LogprobStub) -> None:
    items = make_items("ABCD" * 4)
    letters = score_with_endpoint(items, endpoint(logprob_stub), max_concurrency=4)
    assert letters == [expected(i) for i in range(len(items))]
    body = logprob_stub.requests[0]
    assert body["max_tokens"] == 1 and body["temperature"] == 0 and body["logprobs"] == 20
    assert body["model"] == "stub" and body["prompt"].endswith("Answer:")


def test_endpoint_retries_then_fails_clearly(logprob_stub: LogprobStub) -> None:
    logprob_stub.failures = [503]
    assert score_with_endpoint(make_items("A"), endpoint(logprob_stub)) == ["A"]
    logprob_stub.failures = [400]
    with pytest.raises(EndpointError, match="utility endpoint"):
        score_with_endpoint(make_items("A"), endpoint(logprob_stub))


def test_endpoint_starts_no_request_after_one_failed(logprob_stub: LogprobStub) -> None:
    logprob_stub.failures = [400]  # one at a time: the old pool took the next item regardless
    with pytest.raises(EndpointError, match="utility endpoint"):
        score_with_endpoint(make_items("ABCD"), endpoint(logprob_stub), max_concurrency=1)
    assert len(logprob_stub.requests) == 1


def test_evaluate_utility_endpoint_summary_and_resume(logprob_stub: LogprobStub,
                                                      tmp_path: Path) -> None:
    answers = "ABCD" * 5
    items = make_items(answers)
    kwargs: dict[str, Any] = {"backend": "endpoint", "label": "base",
                              "endpoint": endpoint(logprob_stub), "out_dir": tmp_path,
                              "progress": False}
    first = evaluate_utility(items, limit=8, **kwargs)
    assert first["n"] == 8 and len(logprob_stub.requests) == 8
    assert set(first["per_subject"]) == {"anatomy", "virology"}  # spread, not the first 8
    # a crash mid-write leaves a torn line; it is ignored and recomputed
    pred = tmp_path / first["predictions_file"]
    assert first["predictions_file"].startswith("cache/utility-")
    with pred.open("a") as fh:
        fh.write('{"id": "mmlu-8", "subj')
    summary = evaluate_utility(items, **kwargs)
    assert len(logprob_stub.requests) == 20  # only the 12 missing ones
    assert set(summary) == SUMMARY_KEYS
    unparsed = sum(1 for i in range(20) if expected(i) is None)
    assert summary["unparsed"] == unparsed == 4
    assert summary["accuracy"] == pytest.approx(16 / 20)
    assert summary["model"] == "stub" and summary["adapter"] is None
    assert summary["method"] == "loglik" and summary["dataset"] == "mmlu"
    assert summary["per_subject"] == {"anatomy": {"n": 10, "accuracy": 0.8},
                                      "virology": {"n": 10, "accuracy": 0.8}}
    assert summary["predictions_file"] == first["predictions_file"]
    assert json.loads((tmp_path / "utility-mmlu-base.json").read_text()) == summary
    rows = [json.loads(line) for line in pred.read_text().splitlines()
            if line.startswith('{"id"') and line.endswith("}")]
    assert {r["id"] for r in rows} == {it.id for it in items}
    assert set(rows[0]) == {"id", "subject", "answer", "predicted"}
    # everything done: nothing recomputed, same result
    assert evaluate_utility(items, **kwargs) == summary
    assert len(logprob_stub.requests) == 20
    # another method is another cache (the label stays: same model); overwrite starts again
    other = evaluate_utility(items, **(kwargs | {"method": "generate"}))
    assert other["cache_key"] != summary["cache_key"] and len(logprob_stub.requests) == 40
    again = evaluate_utility(items, overwrite=True, **kwargs)
    assert again == summary and len(logprob_stub.requests) == 60


def test_generate_and_parse(tmp_path: Path) -> None:
    def handler(body: dict[str, Any]) -> str:
        i = int(body["prompt"].split("Question ")[1].split("?")[0].split(" ")[0])
        return ["B. two, because", "The answer is (C)", "I am not sure", " D"][i % 4]

    with StubServer(handler=handler) as stub:
        items = make_items("BCAD")
        assert score_by_generation(items, endpoint(stub)) == ["B", "C", None, "D"]
        assert stub.requests[0]["max_tokens"] == 8 and stub.requests[0]["temperature"] == 0
        summary = evaluate_utility(items, backend="endpoint", method="generate", label="gen",
                                   endpoint=endpoint(stub), model="base-model",
                                   adapter="adapters/x", out_dir=tmp_path, progress=False)
    assert summary["accuracy"] == 0.75 and summary["unparsed"] == 1
    assert summary["model"] == "base-model" and summary["adapter"] == "adapters/x"


def test_evaluate_utility_rejects_bad_arguments(tmp_path: Path) -> None:
    items = make_items("AB")
    with pytest.raises(ValueError, match="needs an endpoint"):
        evaluate_utility(items, backend="endpoint", label="x", out_dir=tmp_path)
    with pytest.raises(ValueError, match="needs a model"):
        evaluate_utility(items, backend="transformers", label="x", out_dir=tmp_path)
    with pytest.raises(ValueError, match="no MMLU items"):
        evaluate_utility([], backend="endpoint", label="x", endpoint=Endpoint("http://x", "m"),
                         out_dir=tmp_path)


def test_letter_variants_count_like_the_endpoint(tiny_dir: Path, tokenizer: Any) -> None:
    from transformers import AutoModelForCausalLM

    from evaluation.utility import letter_token_variants

    variants = letter_token_variants(tokenizer)
    assert [[tokenizer.decode([i]) for i in v] for v in variants] == [
        [f" {x}", x] for x in LETTERS]
    # A model preferring "C" (no space) predicts C, as the endpoint's stripped match would.
    model = prefer(AutoModelForCausalLM.from_pretrained(tiny_dir), variants[2][1])
    assert score_with_transformers(make_items("CA"), model, tokenizer) == ["C", "C"]
