from graph.context import Context


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
