"""Faults of a served model: malformed 200 answers, a hung server, most requests failing.

The stub server scripts them (``failures`` for the next requests, ``faults`` for a share of
all requests). Each test fails on a client that retries only HTTP errors, re-sends a whole
batch when one request of it fails, waits ``12 x request_timeout`` for a hung server, or runs
on whatever share of requests fails.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import httpx
import pytest
from conftest import handler_with, make_context, run_graph

from experiment.cli import main
from graph.context import Context
from graph.runner import Run, create_run, execute
from testing.stub_server import StubHTTPError, StubServer
from tools.llm import CircuitOpenError, Endpoint, EndpointError, generate, is_transient
from tools.store import RunStore


def _is_generator(body: dict) -> bool:
    return body["messages"][-1]["content"].rstrip().endswith("Request:")


def _is_responder(body: dict) -> bool:
    return body["messages"][0]["role"] == "system"


# -- 6. malformed answers ----------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["invalid_json", "empty_choices", "html"])
def test_a_malformed_answer_is_retried(context, stub, fault):
    stub.failures.append(fault)  # the first request: the weakness critic's
    state, _ = run_graph("data_advisor", context(rounds=1))
    assert stub.fault_counts[fault] == 1
    assert state.kept == 4 and state.responses == 4


def test_a_malformed_answer_that_stays_malformed_fails_with_a_clear_message(stub):
    stub.failures.extend(["empty_choices"] * 3)
    endpoint = Endpoint(stub.base_url, "stub", max_retries=2, timeout=10)
    with pytest.raises(EndpointError) as info:
        generate("advisor", endpoint, [[("user", "hi")]])
    message = str(info.value)
    assert message.startswith("malformed answer (not a chat completion) from the advisor endpoint")
    assert "after 3 tries" in message and "IndexError" in message
    assert len(stub.requests) == 3 and is_transient(info.value)  # the node may try again


def test_a_failed_generator_batch_keeps_its_answers(context, stub):
    """One of the generator's 4 requests fails for good (no request retries): the node's retry
    re-sends that one only, and the round's prompts are those of the first answers."""
    stub.failures.extend([0, 0, 0, 0, 503])  # critic, then the generator's batch of 4
    state, store = run_graph("data_advisor", context(rounds=1, max_retries=0))
    generator_requests = [b for b in stub.requests if _is_generator(b)]
    assert stub.status_counts[503] == 1
    assert len(generator_requests) == 5, len(generator_requests)  # 4, then the failed one
    assert state.kept == 4 and len({s["prompt"] for s in store.samples()}) == 4


def test_a_failed_responder_batch_keeps_its_answers(tmp_path):
    failed: list[int] = []

    def first_response_fails(body: dict, text: str) -> str | None:
        if _is_responder(body) and not failed:
            failed.append(1)
            raise StubHTTPError(503)
        return None

    with StubServer(handler=handler_with(first_response_fails)) as stub:
        state, store = run_graph("data_advisor", make_context(stub, tmp_path, rounds=1,
                                                              max_retries=0))
        responder_requests = [b for b in stub.requests if _is_responder(b)]
    assert len(responder_requests) == 5, len(responder_requests)  # 4, then the failed one
    assert state.responses == 4 and all(s["response"] for s in store.samples())


def test_a_run_with_six_percent_malformed_answers_finishes(tmp_path):
    faults = {"invalid_json": 0.02, "empty_choices": 0.02, "html": 0.02}
    with StubServer(faults=faults, fault_seed=3) as stub:
        ctx = make_context(stub, tmp_path, rounds=5, prompts_per_round=10)
        run = create_run(tmp_path / "r", "data_advisor", ctx, embedded=False)
        execute(run, resume=False, show_progress=False)
        served = sum(stub.fault_counts.values())
    assert served >= 3, stub.fault_counts  # the scenario happened
    with RunStore(run.db_path, run.run_id) as store:
        rounds, samples = store.rounds(), list(store.samples())
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    assert all(r["finished_at"] for r in rounds)
    assert len(samples) == sum(r["kept"] for r in rounds) == 50
    assert len({s["id"] for s in samples}) == len({s["prompt"] for s in samples}) == 50
    assert all(s["response"] for s in samples)


# -- 7. a hung server, options, the error-rate circuit breaker ---------------------------------


def test_a_hung_server_fails_the_node_after_its_retries_only(tmp_path):
    """Every request hangs: the critic's request is tried 1 + max_retries times, once (a
    timeout is not tried again by the node's retry), and the message says how long it waited."""
    with StubServer(faults={"hang": 1.0}, hang_seconds=30) as stub:
        ctx = make_context(stub, tmp_path, rounds=1, request_timeout=0.3, max_retries=1)
        with pytest.raises(EndpointError) as info:
            run_graph("data_advisor", ctx)
        sent = len(stub.requests)
    message = str(info.value)
    assert sent == 2, sent
    assert "no answer from the advisor endpoint" in message and stub.base_url in message
    assert re.search(r"after 2 tries in \d+(\.\d)? s", message), message
    assert "resume" in message


def test_the_wait_for_one_request_is_bounded_by_node_timeout(stub):
    stub.faults = {"hang": 1.0}
    stub.hang_seconds = 30
    endpoint = Endpoint(stub.base_url, "stub", timeout=0.4, max_retries=50, node_timeout=1.0)
    with pytest.raises(EndpointError, match="no answer from") as info:
        generate("generator", endpoint, [[("user", "hi")]] * 3)
    waited = float(re.search(r"tries in (\d+(?:\.\d)?) s", str(info.value)).group(1))
    assert waited <= 1.0 + 0.2, str(info.value)  # the bound, not 51 x 0.4 s
    assert len(stub.requests) <= 3 * 4, len(stub.requests)


def test_most_requests_failing_trips_the_circuit_breaker(stub):
    stub.faults = {503: 1.0}
    endpoint = Endpoint(stub.base_url, "stub", timeout=10, max_retries=100)
    with pytest.raises(CircuitOpenError) as info:
        generate("generator", endpoint, [[("user", "hi")]], run="breaker-unit")
    assert len(stub.requests) == 20
    message = str(info.value)
    assert message.startswith(f"stopped: 20 of the last 20 requests to {stub.base_url} failed")
    assert "(last error: " in message and "503" in message and "data kept" in message
    assert not is_transient(info.value)  # the node is not tried again: the run stops


def test_run_options_set_timeouts_and_retries(tmp_path):
    with StubServer(faults={"hang": 1.0}, hang_seconds=30) as stub:
        run = tmp_path / "hung"
        code = main(["run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "1",
                     "--request-timeout", "0.3", "--max-retries", "2", "--node-timeout", "60",
                     "--run", str(run), "--no-progress"])
        sent = len(stub.requests)
    assert code == 1 and sent == 3
    recorded = json.loads((run / "run.json").read_text())["context"]
    assert (recorded["request_timeout"], recorded["max_retries"]) == (0.3, 2)
    assert recorded["node_timeout"] == 60


@pytest.mark.parametrize(
    "option", [["--request-timeout", "0"], ["--max-retries", "-1"], ["--node-timeout", "-5"],
               ["--request-timeout", "soon"]]
)
def test_run_options_are_validated(tmp_path, stub, capsys, option):
    with pytest.raises(SystemExit) as info:
        main(["run", "--base-url", stub.base_url, *option, "--run", str(tmp_path / "x")])
    assert info.value.code == 2
    assert f"argument {option[0]}: " in capsys.readouterr().err  # not "unrecognized arguments"
    assert stub.requests == [] and not (tmp_path / "x").exists()


def test_context_refuses_a_non_positive_timeout():
    with pytest.raises(ValueError, match="request_timeout"):
        Context(request_timeout=0)
    with pytest.raises(ValueError, match="max_retries"):
        Context(max_retries=-1)


def test_a_failing_server_stops_the_run_and_resume_loses_nothing(tmp_path, capsys):
    run = tmp_path / "flaky"
    with StubServer(faults={503: 0.8}, fault_seed=0) as stub:
        code = main(["run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "4",
                     "-k", "4", "--max-retries", "4", "--run", str(run), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 1, err
        assert re.search(rf"stopped: \d+ of the last 20 requests to {stub.base_url} failed", err)
        assert "data kept" in err and f"data-advisor resume {run}" in err
        name = Run.load(run).run_id
        with RunStore(run / "run.sqlite", name) as store:
            before = {s["id"]: s["prompt"] for s in store.samples()
                      if (store.get_round(s["round"]) or {}).get("finished_at")}
        stub.faults = {}
        assert main(["resume", str(run), "--no-progress"]) == 0
    with RunStore(run / "run.sqlite", name) as store:
        rounds, samples = store.rounds(), list(store.samples())
    assert [r["round"] for r in rounds] == [1, 2, 3, 4] and all(r["finished_at"] for r in rounds)
    assert len(samples) == 16 and len({s["id"] for s in samples}) == 16
    assert len({s["prompt"] for s in samples}) == 16 and all(s["response"] for s in samples)
    assert Counter(s["round"] for s in samples) == {1: 4, 2: 4, 3: 4, 4: 4}
    after = {s["id"]: s["prompt"] for s in samples}
    assert all(after[i] == p for i, p in before.items())


def test_fault_names_are_checked(stub):
    stub.failures.append("teapot")
    endpoint = Endpoint(stub.base_url, "stub", max_retries=0, timeout=10)
    with pytest.raises(EndpointError, match="500"):
        generate("advisor", endpoint, [[("user", "hi")]])


@pytest.mark.parametrize("fault", ["invalid_json", "empty_choices", "html"])
def test_the_stub_serves_each_malformed_answer_as_a_200(stub, fault):
    stub.failures.append(fault)
    body = {"model": "stub", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{stub.base_url}/chat/completions", json=body, timeout=10)
    assert response.status_code == 200 and stub.fault_counts == {fault: 1}
    if fault == "html":
        assert response.headers["content-type"].startswith("text/html")
    elif fault == "empty_choices":
        assert response.json()["choices"] == []
    else:
        with pytest.raises(ValueError):
            response.json()
    again = httpx.post(f"{stub.base_url}/chat/completions", json=body, timeout=10)
    assert again.json()["choices"][0]["message"]["content"]  # one fault, then normal answers


def test_the_stub_serves_a_share_of_faults():
    with StubServer(faults={503: 0.25, "html": 0.25}, fault_seed=1) as stub:
        body = {"model": "stub", "messages": [{"role": "user", "content": "hi"}]}
        statuses = [httpx.post(f"{stub.base_url}/chat/completions", json=body).status_code
                    for _ in range(40)]
    assert 0 < statuses.count(503) < 20 and 0 < stub.fault_counts["html"] < 20
    assert stub.status_counts[503] == statuses.count(503)
