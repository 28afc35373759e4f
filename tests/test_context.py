"""The runtime context: per-role endpoints, validation of every field, environment variables."""

import pytest

from graph.context import Context, ContextError, StudioContext


def test_endpoint_per_role_falls_back_to_shared_default():
    ctx = Context(
        base_url="http://a/v1", model="m", responder_base_url="http://b/v1", responder_model="safe"
    )
    assert ctx.endpoint("advisor").base_url == "http://a/v1"
    assert ctx.endpoint("generator").model == "m"
    assert (ctx.endpoint("responder").base_url, ctx.endpoint("responder").model) == (
        "http://b/v1",
        "safe",
    )


def test_defaults_come_from_environment(monkeypatch):
    monkeypatch.setenv("DATA_ADVISOR_BASE_URL", "http://env/v1")
    monkeypatch.setenv("DATA_ADVISOR_ROUNDS", "7")
    monkeypatch.setenv("DATA_ADVISOR_RULE_CHECK", "false")
    ctx = Context()
    assert (ctx.base_url, ctx.rounds, ctx.rule_check) == ("http://env/v1", 7, False)
    assert Context(rounds=3).rounds == 3  # explicit values win


def test_context_holds_no_secret(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-appear")
    assert "sk-should-not-appear" not in str(Context().to_dict())


# --- every field is validated (issue 9, part 8) ------------------------------------------

@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rounds": 0}, "rounds: got 0; must be >= 1"),
        ({"rounds": -3}, "rounds: got -3; must be >= 1"),
        ({"prompts_per_round": 0}, "prompts_per_round: got 0; must be >= 1"),
        ({"prompts_per_round": -5}, "prompts_per_round: got -5; must be >= 1"),
        ({"target_size": -1}, "target_size: got -1; must be >= 1"),
        ({"examples_per_request": -1}, "examples_per_request: got -1; must be >= 1"),
        ({"max_concurrency": 0}, "max_concurrency: got 0; must be >= 1"),
        ({"top_p": 1.5}, "top_p: got 1.5; must be > 0 and <= 1"),
        ({"rounds": "3"}, "rounds: got '3'; must be an integer"),
        ({"rule_check": "yes"}, "rule_check: got 'yes'; must be true or false"),
        ({"max_retries": True}, "max_retries: got True; must be an integer"),
    ],
)
def test_a_value_a_field_cannot_take_is_an_error_naming_it(values, message):
    with pytest.raises(ContextError) as error:
        Context(**values)
    assert str(error.value) == message


def test_every_wrong_field_is_named_at_once():
    with pytest.raises(ContextError) as error:
        Context(rounds=0, max_concurrency=0)
    assert str(error.value) == "max_concurrency: got 0; must be >= 1; rounds: got 0; must be >= 1"


def test_studio_context_is_validated_too():
    with pytest.raises(ContextError, match="prompts_per_round: got 0"):
        StudioContext(prompts_per_round=0)


# --- explicit > environment > default, parsed strictly (issue 9, part 9) ----------------

def test_an_explicit_value_equal_to_the_default_beats_the_environment(monkeypatch):
    monkeypatch.setenv("DATA_ADVISOR_PROMPTS_PER_ROUND", "5")
    assert Context(prompts_per_round=10).prompts_per_round == 10
    assert Context().prompts_per_round == 5
    assert StudioContext(prompts_per_round=10).prompts_per_round == 10


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("FALSE", False), ("1", True), ("0", False),
                        ("Yes", True), ("no", False)],
)
def test_booleans_in_the_environment(monkeypatch, text, value):
    monkeypatch.setenv("DATA_ADVISOR_RULE_CHECK", text)
    assert Context().rule_check is value


@pytest.mark.parametrize(
    ("var", "text", "message"),
    [
        ("RULE_CHECK", "ture", "DATA_ADVISOR_RULE_CHECK=ture: not a boolean (use true or false)"),
        ("ROUNDS", "abc", "DATA_ADVISOR_ROUNDS=abc: not an integer"),
        ("TOP_P", "high", "DATA_ADVISOR_TOP_P=high: not a number"),
        ("ROUNDS", "0", "DATA_ADVISOR_ROUNDS=0: must be >= 1"),
    ],
)
def test_a_bad_environment_value_is_an_error_naming_the_variable(monkeypatch, var, text, message):
    monkeypatch.setenv(f"DATA_ADVISOR_{var}", text)
    with pytest.raises(ContextError) as error:
        Context()
    assert str(error.value) == message
    assert getattr(Context(**{var.lower(): _explicit[var]}), var.lower()) == _explicit[var]


_explicit = {"RULE_CHECK": False, "ROUNDS": 4, "TOP_P": 0.9}
"""A value given explicitly: the variable is then not read, so it cannot fail."""


def test_optional_fields_and_prompts_from_the_environment(monkeypatch):
    monkeypatch.setenv("DATA_ADVISOR_TARGET_SIZE", "25")
    monkeypatch.setenv("DATA_ADVISOR_RESPONDER_MODEL", "")
    monkeypatch.setenv("DATA_ADVISOR_PROMPTS", '{"responder": "Be safe."}')
    ctx = Context()
    assert (ctx.target_size, ctx.responder_model, ctx.prompts) == (
        25, None, {"responder": "Be safe."})
    monkeypatch.setenv("DATA_ADVISOR_PROMPTS", "Be safe.")
    with pytest.raises(ContextError, match="^DATA_ADVISOR_PROMPTS: not valid JSON"):
        Context()


# --- the API key's variable, never the key (issue 9, part 11) ----------------------------

def test_a_key_given_as_the_variable_name_is_refused_and_not_echoed():
    key = "sk-proj-canary-7e3f09a1d2"
    with pytest.raises(ContextError) as error:
        Context(api_key_env=key)
    assert "NAME of an environment variable" in str(error.value)
    assert key not in str(error.value)
    assert Context(api_key_env="MY_KEY_2").api_key_env == "MY_KEY_2"


def test_an_unset_key_variable_is_a_warning_for_a_remote_endpoint_only(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    remote = Context(base_url="http://gpu-box:8000/v1", api_key_env="NO_SUCH_KEY_VAR")
    warning = remote.missing_key_warning()
    assert warning and "NO_SUCH_KEY_VAR is not set" in warning
    assert "http://gpu-box:8000/v1" in warning
    for url in ("http://127.0.0.1:8000/v1", "http://localhost:9/v1", "http://[::1]:8000/v1"):
        assert Context(base_url=url, api_key_env="NO_SUCH_KEY_VAR").missing_key_warning() is None
    # the embedded server is local; a role elsewhere still needs the key
    embedded = Context(responder_base_url="https://api.example.com/v1",
                       api_key_env="NO_SUCH_KEY_VAR")
    assert "https://api.example.com/v1" in (embedded.missing_key_warning(embedded=True) or "")
    assert Context(api_key_env="NO_SUCH_KEY_VAR").missing_key_warning(embedded=True) is None
    monkeypatch.setenv("NO_SUCH_KEY_VAR", "sk-set")
    assert remote.missing_key_warning() is None


def test_one_definition_of_the_roles():
    """ROLES is the Role literal's values, and every module that loops over roles uses it."""
    from typing import get_args

    import experiment.config
    import experiment.stages
    import graph.cli
    import graph.context
    import graph.runner

    assert graph.context.ROLES == get_args(graph.context.Role)
    assert graph.cli.ROLES is experiment.stages.ROLES is graph.context.ROLES
    for role in graph.context.ROLES:  # resume may change every role's endpoint
        assert {f"{role}_base_url", f"{role}_model"} <= set(graph.runner.ENDPOINT_FIELDS)
    assert not hasattr(experiment.config, "ROLES")
