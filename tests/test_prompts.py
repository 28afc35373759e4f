import pytest
from conftest import run_graph

from graph.prompts import SPECS, PromptError, load_prompts, render, validate


def test_shipped_templates_are_valid():
    templates = load_prompts()
    assert set(templates) == set(SPECS)
    for name, text in templates.items():
        validate(name, text)


def test_missing_and_unknown_placeholders_are_errors():
    with pytest.raises(PromptError, match=r"lacks placeholder\(s\) \{weakness\}"):
        validate("generator", "Examples: {examples}")
    with pytest.raises(PromptError, match=r"unknown placeholder\(s\) \{colour\}"):
        validate("generator", "{examples} {weakness} {colour}")
    with pytest.raises(PromptError, match="malformed"):
        validate("generator", "{examples} {weakness")
    with pytest.raises(PromptError, match="unknown prompt"):
        validate("critic", "{summary}")


def test_override_by_folder_and_inline(tmp_path):
    (tmp_path / "summarizer.txt").write_text("S: {summary} W: {weakness}\nUpdated summary:")
    templates = load_prompts(str(tmp_path), {"responder": "Be safe."})
    assert templates["summarizer"].startswith("S: {summary}")
    assert templates["responder"] == "Be safe."
    (tmp_path / "nonsense.txt").write_text("x")
    with pytest.raises(PromptError, match="unknown prompt name 'nonsense'"):
        load_prompts(str(tmp_path))
    with pytest.raises(PromptError, match="does not exist"):
        load_prompts(str(tmp_path / "missing"))


def test_render_fills_named_placeholders():
    assert render("a {x} b {y}", x="1", y="2", z="3") == "a 1 b 2"


def test_inline_override_reaches_the_model(stub, context):
    responder = "You are a careful assistant. CANARY-SYSTEM-PROMPT"
    run_graph("data_advisor", context(rounds=1, prompts={"responder": responder}))
    systems = [
        r["messages"][0]["content"] for r in stub.requests if r["messages"][0]["role"] == "system"
    ]
    assert systems and all(s == responder for s in systems)


def test_bad_inline_override_fails_before_any_call(stub, context):
    with pytest.raises(PromptError):
        run_graph("data_advisor", context(rounds=1, prompts={"summarizer": "{summary} only"}))
    assert stub.requests == []
