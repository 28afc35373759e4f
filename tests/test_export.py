"""Export: the run's columns, TRL's messages and prompt/completion forms, the card, the Hub push.

Every test but the push runs with the Hub offline. The push runs `data-advisor export
--push-to-hub` in a subprocess with ``HF_ENDPOINT`` on a loopback stand-in for the Hub
(``tests/hub_stub.py``): it checks the requests ``huggingface_hub`` makes and the files that
arrive, never the real Hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import handler_with, make_context, run_graph
from datasets import load_dataset, load_from_disk
from hub_stub import HubStub
from huggingface_hub import DatasetCard

from experiment.cli import main
from graph.context import Context
from graph.export import COLUMNS, dataset_card, export_run, run_settings, size_category
from graph.runner import Run, create_run, execute
from graph.templates import load_templates
from testing.stub_server import StubServer
from tools.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may reach the Hub (the libraries read the flag at import: patch both)."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _run_folder(stub: StubServer, folder: Path, **overrides) -> Run:
    """A finished 2-round run folder, made as `data-advisor run --base-url STUB` makes it."""
    values = {"rounds": 2, "prompts_per_round": 3, **overrides}
    run = create_run(folder, "data_advisor", make_context(stub, folder, **values), embedded=False)
    execute(run, resume=False, show_progress=False)
    return run


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_export_formats(stub, context, tmp_path):
    _, store = run_graph("data_advisor", context(rounds=2, prompts_per_round=3), thread_id="ex")
    paths = export_run(store, tmp_path / "out")
    rows = _jsonl(paths["jsonl"])
    assert len(rows) == 6
    assert tuple(rows[0]) == COLUMNS  # the columns training/ and evaluation/ read
    hf = load_from_disk(str(paths["hf"]))
    assert hf.num_rows == 6 and hf[0]["prompt"] == rows[0]["prompt"]
    card = paths["card"].read_text()
    assert paths["card"] == tmp_path / "out" / "README.md"
    assert "rows: 6" in card and "data_advisor" in card
    assert (paths["hf"] / "README.md").read_text() == card  # the card travels with hf/
    import pyarrow.parquet as pq

    assert pq.read_table(paths["parquet"]).num_rows == 6


def test_training_forms_load_with_datasets(stub, tmp_path):
    # the responder leaves one prompt unanswered: it is in no form, and the card counts it
    answered = iter(["", *["A safe and helpful answer."] * 5])
    stub.handler = handler_with(
        lambda body, text: next(answered) if body["messages"][0]["role"] == "system" else None
    )
    run = _run_folder(stub, tmp_path / "runs" / "da1")
    assert main(["export", str(run.folder)]) == 0
    out = run.folder / "export"
    data = _jsonl(out / "data.jsonl")
    assert len(data) == 5 and all(r["response"] for r in data)

    expected_messages = [
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
        for r in data
    ]
    for messages in (
        load_dataset("json", data_files=str(out / "messages.jsonl"), split="train"),
        load_dataset("parquet", data_files=str(out / "messages.parquet"), split="train"),
        load_from_disk(str(out / "hf-messages")),
        # the card's config (a fresh cache: datasets 5.2 caches a local folder by its name)
        load_dataset(str(out), "messages", split="train", cache_dir=str(tmp_path / "c1")),
    ):
        assert messages["messages"] == expected_messages
        assert messages["id"] == [r["id"] for r in data]
        assert messages["category"] == [r["category"] for r in data]

    for pc in (
        load_dataset("json", data_files=str(out / "prompt_completion.jsonl"), split="train"),
        load_from_disk(str(out / "hf-prompt_completion")),
        load_dataset(str(out), "prompt_completion", split="train", cache_dir=str(tmp_path / "c2")),
    ):
        assert pc["prompt"] == [r["prompt"] for r in data]
        assert pc["completion"] == [r["response"] for r in data]
        assert "response" not in pc.column_names and "messages" not in pc.column_names

    default = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "c3"))  # "default"
    assert default.column_names == list(COLUMNS) and default["id"] == [r["id"] for r in data]
    card = (out / "README.md").read_text()
    assert "rows: 5 (prompts with a response)" in card
    assert "prompts without a response: 1 (not exported, in any form)" in card


def test_card_metadata_settings_templates_and_categories(stub, tmp_path):
    override = "CUSTOM responder system prompt"
    run = _run_folder(stub, tmp_path / "da1", prompts={"responder": override}, seed=7)
    assert main(["export", str(run.folder), "--license", "cc-by-4.0", "--format", "jsonl"]) == 0
    path = run.folder / "export" / "README.md"
    card = DatasetCard.load(path)
    meta = card.data.to_dict()
    assert meta["size_categories"] == ["n<1K"] and meta["license"] == "cc-by-4.0"
    assert meta["task_categories"] == ["text-generation"]
    assert {"safety", "synthetic", "data_advisor", "not-for-all-audiences"} <= set(meta["tags"])
    assert {c["config_name"]: c["data_files"][0]["path"] for c in meta["configs"]} == {
        "default": "data.jsonl", "messages": "messages.jsonl",
        "prompt_completion": "prompt_completion.jsonl",
    }
    text = path.read_text()
    assert "Content warning" in text
    # every context field of run.json, with its value
    recorded = json.loads((run.folder / "run.json").read_text())["context"]
    assert recorded["seed"] == 7
    for key, value in recorded.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        assert f"| {key} | {shown} |" in text, key
    assert "| seed | 7 |" in text and "| K (prompts per round) | 3 |" in text
    # the sha256 of the templates the run used: the override, not the shipped responder
    used = load_templates(None, {"responder": override})
    for name in ("weakness_critic", "generator", "summarizer", "responder"):
        digest = hashlib.sha256(used[name].encode()).hexdigest()
        assert f"| {name} | `{digest}` | 1 |" in text
    shipped = hashlib.sha256(load_templates(None, {})["responder"].encode()).hexdigest()
    assert shipped not in text and "self_instruct_generator" not in text
    # category counts: every category with its rows
    rows = _jsonl(run.folder / "export" / "data.jsonl")
    for category in {r["category"] for r in rows}:
        n = sum(r["category"] == category for r in rows)
        assert f"| {category} | {n} |" in text
    # without --license no license is claimed
    assert main(["export", str(run.folder), "--out", str(tmp_path / "e2")]) == 0
    assert "license" not in DatasetCard.load(tmp_path / "e2" / "README.md").data.to_dict()


def test_size_category_follows_the_row_count():
    assert [size_category(n) for n in (0, 999, 1000, 9_999, 10_000, 10**6, 10**12)] == [
        "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "1M<n<10M", "n>1T"
    ]
    row = {"id": "r", "prompt": "p", "response": "r", "category": "c", "round": 1,
           "method": "data_advisor", "generator_model": "g", "responder_model": "r"}
    card = dataset_card("big", [row] * 1500, settings={}, counts={}, templates=[], files={})
    assert DatasetCard(card).data.to_dict()["size_categories"] == ["1K<n<10K"]


def test_settings_leave_out_credentials_and_local_paths(tmp_path):
    ctx = Context(base_url="https://user:s3cret@gpu-box:8000/v1", data_path=str(tmp_path / "x"))
    moved = {"time": "T", "field": "base_url", "old": "http://u:pw@old:1/v1", "new": "http://new/v1"}
    settings = run_settings(Run(tmp_path, "data_advisor", ctx, embedded=False, history=[moved]))
    assert settings["context"]["base_url"] == "https://gpu-box:8000/v1"
    assert "s3cret" not in json.dumps(settings) and "data_path" not in settings["context"]
    card = dataset_card("r", [], settings=settings, counts={}, templates=[], files={})
    assert "| T | base_url | http://old:1/v1 | http://new/v1 |" in card  # changes on resume
    assert "pw@" not in card and "s3cret" not in card


def test_settings_a_run_predates_are_not_shown_as_recorded(stub, tmp_path):
    """An older run.json lacks later fields: the card must not state today's default for them."""
    run = _run_folder(stub, tmp_path / "old")
    data = json.loads((run.folder / "run.json").read_text())
    del data["context"]["summary_overflow"]  # as a run made before the setting existed
    (run.folder / "run.json").write_text(json.dumps(data))
    settings = run_settings(Run.load(run.folder))
    assert "summary_overflow" not in settings["context"]
    assert settings["unrecorded"] == ["summary_overflow"]
    assert main(["export", str(run.folder)]) == 0
    card = (run.folder / "export" / "README.md").read_text()
    assert "| summary_overflow |" not in card
    assert "Not recorded" in card and "`summary_overflow`" in card


def test_changed_templates_are_recorded_from_their_round(tmp_path):
    with RunStore(tmp_path / "run.sqlite", "r") as store:
        store.record_templates(1, {"responder": "a"})
        store.record_templates(3, {"responder": "a"})  # unchanged: keeps round 1
        store.record_templates(3, {"responder": "b"})
        assert [(t["from_round"], t["sha256"][:8]) for t in store.templates()] == [
            (1, hashlib.sha256(b"a").hexdigest()[:8]), (3, hashlib.sha256(b"b").hexdigest()[:8])
        ]


def test_push_to_hub_uploads_the_card_and_the_data_files(stub, tmp_path):
    run = _run_folder(stub, tmp_path / "da1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    with HubStub() as hub:
        env |= {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_stub_token", "HF_HOME": str(tmp_path),
                "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        proc = subprocess.run(
            [sys.executable, "-m", "experiment.cli", "export", str(run.folder),
             "--push-to-hub", "alice/da1"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert hub.repos["alice/da1"]["type"] == "dataset"
        assert hub.repos["alice/da1"]["visibility"] == "private"
        files = hub.files["alice/da1"]
        export = run.folder / "export"
        assert set(files) == {"README.md", "data.jsonl", "data.parquet", "messages.jsonl",
                              "messages.parquet", "prompt_completion.jsonl",
                              "prompt_completion.parquet"}  # no hf* folders
        assert all(files[name] == (export / name).read_bytes() for name in files)
        assert not hub.unexpected
        assert all(auth == "Bearer hf_stub_token" for _, _, auth in hub.requests)
        assert "pushed to the Hub (private dataset alice/da1)" in proc.stdout

        # --public makes a public repository
        proc = subprocess.run(
            [sys.executable, "-m", "experiment.cli", "export", str(run.folder),
             "--push-to-hub", "alice/open", "--public", "--format", "parquet"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert hub.repos["alice/open"]["visibility"] == "public"
        assert set(hub.files["alice/open"]) == {
            "README.md", "data.parquet", "messages.parquet", "prompt_completion.parquet"}

        # no token: the Hub's refusal is a one-line error
        del env["HF_TOKEN"]
        proc = subprocess.run(
            [sys.executable, "-m", "experiment.cli", "export", str(run.folder),
             "--push-to-hub", "alice/denied", "--format", "jsonl"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "could not push to the Hub dataset alice/denied" in proc.stderr
        assert "401" in proc.stderr and "Traceback" not in proc.stderr
        assert "alice/denied" not in hub.repos


def test_push_to_hub_needs_a_data_file(stub, tmp_path, capsys):
    run = _run_folder(stub, tmp_path / "da1")
    code = main(["export", str(run.folder), "--format", "hf", "--push-to-hub", "alice/x"])
    assert code == 2
    assert "add --format parquet" in capsys.readouterr().err


def test_a_failed_push_is_a_one_line_error_that_keeps_the_export(stub, tmp_path, capsys):
    run = _run_folder(stub, tmp_path / "da1")
    # offline (this module's fixture): huggingface_hub refuses before any request
    assert main(["export", str(run.folder), "--push-to-hub", "alice/x"]) == 2
    err = capsys.readouterr().err
    assert "could not push to the Hub dataset alice/x" in err and "HF_HUB_OFFLINE" in err
    assert "Traceback" not in err and (run.folder / "export" / "data.parquet").exists()
