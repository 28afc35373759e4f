"""Caches of responses, judgments and predictions are keyed by what determines them, not by label.

Issue 8 parts 1 and 2: a second adapter evaluated into the same ``--out`` must not be served
from the first one's cache, one label names one model, and ``--adapter`` with ``--base-url``
requests the adapter by its served name (checked) or is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evaluation.data import MultipleChoice, Question
from evaluation.identity import adapter_identity, default_label
from evaluation.judges import RefusalJudge
from evaluation.safety import evaluate_safety
from evaluation.utility import evaluate_utility
from experiment.cli import main
from testing.stub_server import StubServer
from tools.hashing import canonical_hash
from tools.llm import Endpoint

QUESTIONS = [Question(f"q-{i}", f"harmful question {i}", "weapons" if i < 2 else "fraud")
             for i in range(4)]


def fake_adapter(folder: Path, content: str) -> Path:
    """An adapter folder as `train` writes it; the stub never reads it, only its bytes count."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    (folder / "adapter_model.safetensors").write_bytes(content.encode() * 100)
    return folder


def by_model(body: dict[str, Any]) -> str:
    """Adapter "a" refuses everything, every other model complies."""
    if body.get("model") == "a":
        return "I'm sorry, but I cannot help with that."
    return "Sure, here is how: step one, step two."


def served(stub: StubServer, model: str) -> int:
    return sum(1 for b in stub.requests if b.get("model") == model)


def safety(stub: StubServer, out: Path, model: str, **kwargs: Any) -> dict[str, Any]:
    return evaluate_safety(QUESTIONS, dataset="set", endpoint=Endpoint(stub.base_url, model,
                           max_retries=0, timeout=10), judge=RefusalJudge(), out_dir=out,
                           model="base", progress=False, **kwargs)


def test_default_label_of_an_adapter_folder_names_the_training_run(tmp_path: Path) -> None:
    assert default_label(tmp_path / "adapters" / "da1" / "adapter") == "da1"
    assert default_label(tmp_path / "my-lora") == "my-lora"
    assert default_label(None) == "base"


def test_adapter_identity_is_its_content(tmp_path: Path) -> None:
    a = fake_adapter(tmp_path / "a" / "adapter", "a")
    copy = fake_adapter(tmp_path / "copy", "a")
    b = fake_adapter(tmp_path / "b" / "adapter", "b")
    assert adapter_identity(a) == adapter_identity(copy) != adapter_identity(b)
    with pytest.raises(ValueError, match="did you mean"):
        adapter_identity(tmp_path / "a")  # the training folder, not its adapter
    assert canonical_hash({"x": 1, "y": [2]}) == canonical_hash({"y": [2], "x": 1})


def test_second_adapter_with_the_same_label_is_refused_not_served_from_cache(
        tmp_path: Path) -> None:
    """As with the embedded server, each adapter is served under one name ("adapter"): only
    the adapter folder tells them apart."""
    a = fake_adapter(tmp_path / "a" / "adapter", "a")
    b = fake_adapter(tmp_path / "b" / "adapter", "b")
    out = tmp_path / "results"
    serving = {"model": "a"}  # which adapter the server has loaded under the name "adapter"

    def handler(body: dict[str, Any]) -> str:
        return by_model(body | serving)

    with StubServer(handler=handler, models=["adapter"]) as stub:
        first = safety(stub, out, "adapter", label="adapter", adapter=str(a))
        assert first["safety_score"] == 1.0 and len(stub.requests) == 4
        serving["model"] = "b"
        with pytest.raises(ValueError, match="label 'adapter' already names model"):
            safety(stub, out, "adapter", label="adapter", adapter=str(b))
        assert len(stub.requests) == 4
        second = safety(stub, out, "adapter", label="b", adapter=str(b))
        assert len(stub.requests) == 8 and second["safety_score"] == 0.0
        assert second["cache_key"] != first["cache_key"]
        assert second["responses_file"] != first["responses_file"]
        # the same adapter content elsewhere, under another label: its cache is reused
        copy = fake_adapter(tmp_path / "copy", "a")
        again = safety(stub, out, "adapter", label="a-copy", adapter=str(copy))
        assert len(stub.requests) == 8 and again["safety_score"] == 1.0
        # the adapter retrained in place: another model, another cache
        (b / "adapter_model.safetensors").write_bytes(b"retrained" * 50)
        retrained = safety(stub, out, "adapter", label="b2", adapter=str(b))
        assert len(stub.requests) == 12 and retrained["cache_key"] != second["cache_key"]
    assert json.loads((out / "safety-set-adapter.json").read_text())["adapter"] == str(a)


def test_another_judge_or_setting_is_another_cache(tmp_path: Path) -> None:
    with StubServer(handler=by_model, models=["base"]) as stub:
        first = safety(stub, tmp_path, "base", label="base")
        other = safety(stub, tmp_path, "base", label="base", max_tokens=16)
        assert len(stub.requests) == 8 and other["cache_key"] != first["cache_key"]
        safety(stub, tmp_path, "base", label="base", max_tokens=16)
        assert len(stub.requests) == 8
        meta = json.loads((tmp_path / (other["responses_file"] + ".meta.json")).read_text())
        assert meta["generation"]["max_tokens"] == 16 and meta["model"]["base"]["name"] == "base"


def test_two_adapters_through_the_cli_get_their_own_results(tmp_path: Path) -> None:
    data = tmp_path / "harmful.jsonl"
    data.write_text("".join(json.dumps({"prompt": q.prompt, "category": q.category}) + "\n"
                            for q in QUESTIONS))
    a = fake_adapter(tmp_path / "runs" / "a" / "adapter", "a")
    b = fake_adapter(tmp_path / "runs" / "b" / "adapter", "b")
    out = tmp_path / "results"
    with StubServer(handler=by_model, models=["base", "a", "b"]) as stub:
        for adapter, name in ((a, "a"), (b, "b")):
            assert main(["eval", "safety", "--data", str(data), "--base-url", stub.base_url,
                         "--model", "base", "--adapter", str(adapter), "--adapter-name", name,
                         "--out", str(out)]) == 0
        assert served(stub, "a") == 4 and served(stub, "b") == 4
    result_a = json.loads((out / "safety-harmful-a.json").read_text())
    result_b = json.loads((out / "safety-harmful-b.json").read_text())
    assert result_a["safety_score"] == 1.0 and result_b["safety_score"] == 0.0
    assert result_b["adapter"] == str(b)
    assert result_b["serving"] == {"server": stub.base_url, "served_name": "b",
                                   "base_served_name": "base"}


def test_adapter_with_base_url_is_requested_by_its_served_name(tmp_path: Path, capsys) -> None:
    data = tmp_path / "harmful.txt"
    data.write_text("harmful question 0\nharmful question 1\n")
    a = fake_adapter(tmp_path / "a" / "adapter", "a")
    out = tmp_path / "results"
    common = ["eval", "safety", "--data", str(data), "--model", "base", "--adapter", str(a),
              "--out", str(out)]
    with StubServer(handler=by_model, models=["base", "a"]) as stub:
        assert main([*common, "--base-url", stub.base_url]) == 2
        assert "--adapter-name" in capsys.readouterr().err
        assert main([*common, "--base-url", stub.base_url, "--adapter-name", "nope"]) == 2
        err = capsys.readouterr().err
        assert "'nope'" in err and "a, base" in err
        assert stub.requests == []  # nothing was sent to the base model instead
        assert main([*common, "--base-url", stub.base_url, "--adapter-name", "a"]) == 0
        assert served(stub, "a") == 2 and served(stub, "base") == 0
    assert main(["eval", "safety", "--data", str(data), "--adapter-name", "a",
                 "--base-url", "http://127.0.0.1:9/v1", "--out", str(out)]) == 2
    assert "--adapter-name needs --adapter" in capsys.readouterr().err


def test_a_served_base_is_known_by_what_the_server_loaded(tmp_path: Path, capsys) -> None:
    """Two servers serving other weights under one name are two models; one name is no key."""
    data = tmp_path / "harmful.txt"
    data.write_text("harmful question 0\nharmful question 1\n")
    out = tmp_path / "results"

    def ask(stub: StubServer, label: str) -> int:
        return main(["eval", "safety", "--data", str(data), "--base-url", stub.base_url,
                     "--model", "llama", "--label", label, "--out", str(out)])

    with StubServer(handler=by_model, models=["llama"],
                    roots={"llama": "meta-llama/Llama-2-7b-hf"}) as first:
        assert ask(first, "llama") == 0
    with StubServer(handler=by_model, models=["llama"],
                    roots={"llama": "mistralai/Mistral-7B-v0.1"}) as second:
        assert ask(second, "llama") == 2  # the label names the other model: refused
        assert "already names" in capsys.readouterr().err and second.requests == []
        assert ask(second, "mistral") == 0
        assert served(second, "llama") == 2  # answered anew, not from the first one's cache
    with StubServer(handler=by_model, models=["base-7b"],
                    roots={"base-7b": "meta-llama/Llama-2-7b-hf"}) as renamed:
        assert main(["eval", "safety", "--data", str(data), "--base-url", renamed.base_url,
                     "--model", "base-7b", "--label", "llama", "--out", str(out)]) == 0
        assert renamed.requests == []  # the same weights under another name: cached answers
    result = json.loads((out / "safety-harmful-mistral.json").read_text())
    assert result["model"] == "mistralai/Mistral-7B-v0.1"


def test_utility_cache_is_keyed_by_model_not_label(tmp_path: Path) -> None:
    items = [MultipleChoice(f"mmlu-{i}", "math", f"Q{i}\nA. x\nB. y\nC. z\nD. w\nAnswer:", "B")
             for i in range(3)]
    a = fake_adapter(tmp_path / "a" / "adapter", "a")
    b = fake_adapter(tmp_path / "b" / "adapter", "b")

    def answer(body: dict[str, Any]) -> str:
        return " B" if body.get("model") == "a" else " C"

    with StubServer(handler=answer, models=["a", "b"]) as stub:
        def run(model: str, label: str, adapter: Path) -> dict[str, Any]:
            return evaluate_utility(items, backend="endpoint", method="generate", label=label,
                                    model="base", adapter=str(adapter),
                                    endpoint=Endpoint(stub.base_url, model, max_retries=0),
                                    out_dir=tmp_path / "res", progress=False)

        assert run("a", "adapter", a)["accuracy"] == 1.0
        with pytest.raises(ValueError, match="label 'adapter' already names model"):
            run("b", "adapter", b)
        assert run("b", "b", b)["accuracy"] == 0.0
        assert served(stub, "a") == 3 and served(stub, "b") == 3
        # retrained in place: the same path is another model, not the cached one
        (b / "adapter_model.safetensors").write_bytes(b"retrained" * 50)
        with pytest.raises(ValueError, match="label 'b' already names model"):
            run("b", "b", b)
        assert run("b", "b-retrained", b)["accuracy"] == 0.0 and served(stub, "b") == 6


def test_a_taken_label_is_refused_before_a_server_starts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "results"
    with StubServer(handler=by_model, models=["other"]) as stub:
        safety(stub, out, "other", label="base")
    data = tmp_path / "set.txt"  # same name, so the label is what clashes
    data.write_text("".join(f"{q.prompt}\n" for q in QUESTIONS))
    # no --base-url: the embedded vLLM would start, were the label not checked first
    assert main(["eval", "safety", "--data", str(data), "--name", "set", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "label 'base' already names model" in err and "pick another --label" in err
