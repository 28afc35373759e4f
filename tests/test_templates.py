import pytest
from conftest import run_graph

from graph.templates import SPECS, TemplateError, load_templates, placeholders, render, validate


def test_shipped_templates_are_valid():
    templates = load_templates()
    assert set(templates) == set(SPECS)
    for name, text in templates.items():
        validate(name, text)


def test_missing_and_unknown_placeholders_are_errors():
    with pytest.raises(TemplateError, match=r"lacks placeholder\(s\) \{weakness\}"):
        validate("generator", "Examples: {examples}")
    with pytest.raises(TemplateError, match=r"unknown placeholder\(s\) \{colour\}"):
        validate("generator", "{examples} {weakness} {colour}")
    with pytest.raises(TemplateError, match=r"line 1: unmatched '\{'"):
        validate("generator", "{examples} {weakness")
    with pytest.raises(TemplateError, match="unknown template"):
        validate("critic", "{summary}")


def test_override_by_folder_and_inline(tmp_path):
    (tmp_path / "summarizer.txt").write_text("S: {summary} W: {weakness}\nUpdated summary:")
    templates = load_templates(str(tmp_path), {"responder": "Be safe."})
    assert templates["summarizer"].startswith("S: {summary}")
    assert templates["responder"] == "Be safe."
    (tmp_path / "nonsense.txt").write_text("x")
    with pytest.raises(TemplateError, match="unknown template name 'nonsense'"):
        load_templates(str(tmp_path))
    with pytest.raises(TemplateError, match="does not exist"):
        load_templates(str(tmp_path / "missing"))


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
    with pytest.raises(TemplateError):
        run_graph("data_advisor", context(rounds=1, prompts={"summarizer": "{summary} only"}))
    assert stub.requests == []


# --- errors name the file and the line (issue 9, part 10) ---------------------------------


def test_a_stray_brace_in_a_template_file_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "generator.txt"
    path.write_text("Examples:\n{examples}\nWrite a {weakness request.\n")
    with pytest.raises(TemplateError) as error:
        load_templates(str(tmp_path))
    assert str(error.value) == (
        f"{path} line 3: unmatched '{{' (write '{{{{' for a literal brace)"
    )
    path.write_text("{examples}\n{weakness}\nclose } here\n")
    with pytest.raises(TemplateError, match=r"generator.txt line 3: unmatched '\}' \(write '\}\}'"):
        load_templates(str(tmp_path))


def test_escaped_braces_and_a_bad_inline_override_say_where():
    assert placeholders("{{literal}} {examples} {{") == {"examples"}
    with pytest.raises(TemplateError, match=r"inline template 'summarizer' line 2: unmatched '\{'"):
        load_templates(None, {"summarizer": "{summary} {weakness}\n{ oops"})


def test_a_template_that_is_not_utf8_names_the_file_byte_and_line(tmp_path):
    path = tmp_path / "summarizer.txt"
    path.write_bytes("Summary:\n{summary}\nNeu: {weakness} \u00e4\n".encode("latin-1"))
    with pytest.raises(TemplateError) as error:
        load_templates(str(tmp_path))
    assert str(error.value) == f"{path}: not UTF-8 text (byte 0xe4 at line 3); save it as UTF-8"


def test_the_shipped_templates_are_package_data():
    """An installed package finds its templates: pyproject ships graph/templates/*.txt."""
    import tomllib
    from fnmatch import fnmatch
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["graph"]
    for name in SPECS:
        shipped = f"templates/{name}.txt"
        assert (root / "graph" / shipped).is_file()
        assert any(fnmatch(shipped, glob) for glob in globs), (shipped, globs)
