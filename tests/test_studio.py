"""`langgraph dev` end to end: the Studio server loads both graphs and runs them over HTTP.

The test starts the loopback stub (``testing.stub_server``) in the test process and
``langgraph dev`` as a subprocess (offline: no browser, no reload, no analytics, no version
check, no tracing). The endpoint and the runs folder reach the server's graphs through the
``DATA_ADVISOR_*`` environment variables (``graph/context.py``); everything else is passed per
run in the ``context`` field of the run-create request, exactly as Studio does. Checks:

* both ``data_advisor`` and ``self_instruct`` are served as assistants;
* a 2-round Data Advisor run with K=3 ends with the expected thread state (so the per-run
  context reaches the nodes: the defaults would give 10 rounds of 10 prompts) and writes its
  rounds and samples to the thread's run folder ``<runs_dir>/<thread id>/``;
* the thread's state shows each round's prompts and response previews while that round runs
  (through the server's state history), and only the last round's at the end;
* ``data-advisor status``, ``history`` and ``export`` accept the thread's run folder;
* a prompt swapped through ``context.prompts`` is what the responder sends.

The server runs in a temporary folder with a copy of ``langgraph.json`` whose paths point
back to the repository: the in-memory runtime keeps its state in ``./.langgraph_api``, and a
test must neither write into the checkout nor mix its threads with a developer's Studio ones.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_sync_client

from experiment.cli import main
from graph.runner import DB_FILE
from graph.seeds import read_seeds
from nodes.responder import preview
from testing.stub_server import StubServer
from tools.store import RunStore

pytestmark = pytest.mark.studio

ROOT = Path(__file__).resolve().parents[1]
LANGGRAPH = Path(sys.executable).with_name("langgraph")
START_TIMEOUT = 120.0
RUN_TIMEOUT = 60.0
GRAPHS = {"data_advisor", "self_instruct"}
CANARY = "CANARY system prompt"
_API_URL = re.compile(r"API: (http://127\.0\.0\.1:\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def shown_prompts(values: dict) -> list[str]:
    """The round's prompts as the state shows them: its batches' prompts, batch by batch."""
    return [p for batch in values.get("batches", []) for p in batch.get("prompts", [])]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read(log: Path) -> str:
    """The server log without colour codes (the CLI colours it whatever NO_COLOR says)."""
    return _ANSI.sub("", log.read_text("utf-8", errors="replace")) if log.exists() else ""


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(_read(log).splitlines()[-lines:]) or "(empty log)"


def _config_copy(folder: Path) -> Path:
    """The repository's langgraph.json, with its relative paths made absolute, in ``folder``."""
    config = json.loads((ROOT / "langgraph.json").read_text("utf-8"))

    def absolute(spec: str) -> str:
        return str((ROOT / spec).resolve()) if spec.startswith(".") else spec

    config["dependencies"] = [absolute(d) for d in config.get("dependencies", [])]
    config["graphs"] = {name: absolute(spec) for name, spec in config["graphs"].items()}
    path = folder / "langgraph.json"
    path.write_text(json.dumps(config, indent=2), "utf-8")
    return path


def _server_env(stub: StubServer, runs_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATA_ADVISOR_", "LANGSMITH_", "LANGCHAIN_"))}
    env.update({
        "DATA_ADVISOR_BASE_URL": stub.base_url,
        "DATA_ADVISOR_MODEL": "stub",
        "DATA_ADVISOR_RUNS_DIR": str(runs_dir),
        "DATA_ADVISOR_REQUEST_TIMEOUT": "30",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",  # the CLI's usage ping
        "LANGGRAPH_NO_VERSION_CHECK": "true",  # the server's PyPI version check
        "LANGSMITH_TRACING": "false",
        "LANGCHAIN_TRACING_V2": "false",
        "PYTHONUNBUFFERED": "1",
        "NO_COLOR": "1",
        # the graphs call the stub on loopback: never through a proxy from the environment
        "NO_PROXY": ",".join(filter(None, ["127.0.0.1,localhost", os.environ.get("NO_PROXY")])),
    })
    env["no_proxy"] = env["NO_PROXY"]
    return env


def _wait_until_up(proc: subprocess.Popen, log: Path, port: int) -> str:
    """The server's base URL once ``GET /ok`` answers; fails with the log tail otherwise."""
    deadline = time.monotonic() + START_TIMEOUT
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"langgraph dev exited with {proc.returncode}:\n{_tail(log)}")
        if url is None:
            # the CLI moves to another port when the requested one was taken meanwhile
            found = _API_URL.search(_read(log))
            url = found.group(1) if found else None
        try:
            base = url or f"http://127.0.0.1:{port}"
            if httpx.get(f"{base}/ok", timeout=2.0, trust_env=False).is_success:
                return base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"langgraph dev did not answer within {START_TIMEOUT:.0f} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, then SIGKILL if it is still there."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    else:  # the leader is gone: make sure no child of its group is left
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run(client: Any, graph: str, context: dict[str, Any], log: Path) -> tuple[str, dict]:
    """Run ``graph`` on a new thread with ``context``; return the thread id and its state."""
    thread_id = client.threads.create()["thread_id"]
    run = client.runs.create(thread_id, graph, input={}, context=context)
    deadline = time.monotonic() + RUN_TIMEOUT
    while (status := client.runs.get(thread_id, run["run_id"])["status"]) in ("pending",
                                                                                "running"):
        if time.monotonic() > deadline:
            pytest.fail(f"run of {graph} still {status} after {RUN_TIMEOUT:.0f} s:\n{_tail(log)}")
        time.sleep(0.2)
    assert status == "success", f"run of {graph} ended {status}:\n{_tail(log)}"
    return thread_id, client.threads.get_state(thread_id)


def test_langgraph_dev_serves_and_runs_the_graphs(tmp_path, capsys):
    assert LANGGRAPH.exists(), f"no langgraph executable next to {sys.executable}"
    runs_dir = tmp_path / "runs"
    log = tmp_path / "langgraph-dev.log"
    port = _free_port()
    with StubServer() as stub, log.open("wb") as out:
        proc = subprocess.Popen(
            [str(LANGGRAPH), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
             "--port", str(port), "--config", str(_config_copy(tmp_path))],
            cwd=tmp_path, env=_server_env(stub, runs_dir), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            url = _wait_until_up(proc, log, port)
            client = get_sync_client(url=url, api_key=None, timeout=30.0)

            # both graphs of langgraph.json are served
            assistants = client.assistants.search(limit=100)
            assert GRAPHS <= {a["graph_id"] for a in assistants}, _tail(log)

            # a Data Advisor run with its settings in the run's context
            thread_id, state = _run(client, "data_advisor",
                                    {"rounds": 2, "prompts_per_round": 3}, log)
            values = state["values"]
            assert state["next"] == []
            seeds = read_seeds("categories")
            assert len(seeds) == 10
            assert values["round"] == 2
            assert values["kept"] == 6 and values["responses"] == 6
            assert len(values["summary"]) == len(seeds) + 2
            assert values["summary"][: len(seeds)] == seeds

            # the data went to the thread's run folder under DATA_ADVISOR_RUNS_DIR
            folder = runs_dir / thread_id
            with RunStore(folder / DB_FILE, thread_id) as store:
                rounds = store.rounds()
                assert [r["round"] for r in rounds] == [1, 2]
                assert values["summary"][len(seeds):] == [r["weaknesses"][0] for r in rounds]
                assert all(r["kept"] == 3 and r["responses"] == 3 for r in rounds)
                samples = list(store.samples(with_response=True))
                assert len(samples) == 6 and len(list(store.samples())) == 6
                assert {s["round"] for s in samples} == {1, 2}
                assert all(s["generator_model"] == "stub" for s in samples)
            prompts = {r: [s["prompt"] for s in samples if s["round"] == r] for r in (1, 2)}

            # the state shows what each round produced: at the end the last round's ...
            assert shown_prompts(values) == prompts[2]
            assert values["round_responses"] == [
                preview(s["response"]) for s in samples if s["round"] == 2
            ]
            # ... and, step by step, each round's own prompts (none before its generator)
            history = client.threads.get_history(thread_id, limit=100)
            shown = {}
            for step in history:
                if shown_prompts(step["values"]):
                    shown.setdefault(step["values"]["round"], shown_prompts(step["values"]))
                    assert shown_prompts(step["values"]) == prompts[step["values"]["round"]]
            assert set(shown) == {1, 2}

            # the thread's run folder is one the commands accept
            capsys.readouterr()
            assert main(["status", str(folder), "--json"]) == 0
            status = json.loads(capsys.readouterr().out)
            assert status["prompts"] == status["responses"] == 6 and status["rounds_done"] == 2
            assert main(["history", str(folder), "--json"]) == 0
            assert [r["round"] for r in json.loads(capsys.readouterr().out)] == [1, 2]
            assert main(["export", str(folder), "--format", "jsonl"]) == 0
            exported = (folder / "export" / "messages.jsonl").read_text().splitlines()
            assert [json.loads(r)["messages"][0]["content"] for r in exported] == [
                *prompts[1], *prompts[2]
            ]

            # a prompt swapped in the context reaches the responder
            before = len(stub.requests)
            thread_2, state_2 = _run(client, "data_advisor",
                                     {"rounds": 1, "prompts": {"responder": CANARY}}, log)
            assert thread_2 != thread_id and state_2["values"]["round"] == 1
            requests = stub.requests[before:]
            canary = [r for r in requests if r["messages"][0]["content"] == CANARY]
            # default K (10), all kept by the stub, each answered with the swapped prompt
            assert len(canary) == state_2["values"]["responses"] == 10
            assert all(r["messages"][0]["role"] == "system" for r in canary)
            assert not any(r["messages"][0]["content"] == CANARY for r in stub.requests[:before])
        finally:
            _stop(proc)
