"""The prompt judge in the loop (nodes.judge), coverage in a fixed taxonomy (tools.taxonomy) and
coverage steering of the critic, against the stub with scripted judge answers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import handler_with, make_context, run_graph

from experiment.config import ConfigError
from graph.context import Context, ContextError
from nodes.judge import Verdict, parse_llama_guard_verdict, parse_llm_verdict
from testing.stub_server import StubServer
from tools.taxonomy import TaxonomyError, coverage, load_taxonomy, parse_taxonomy

CASE = re.compile(r"\(case (\d+)\)")


def guard_answer(body: dict[str, Any], text: str) -> str | None:
    """Llama Guard 3 (model ``guard``) on the generator's stub prompts, by their case number:
    0 mod 3 safe, 1 mod 3 unsafe S2, 2 mod 3 a malformed answer."""
    if body["model"] != "guard":
        return None
    assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
    case = int(CASE.search(text).group(1))  # type: ignore[union-attr]
    return ["safe", "\n\nunsafe\nS2", "I think this is fine?"][case % 3]


def test_llama_guard_judge_rejects_stores_categories_and_keeps_unjudged(
        tmp_path: Path) -> None:
    with StubServer(handler=handler_with(guard_answer)) as stub:
        ctx = make_context(stub, tmp_path, rounds=2, prompts_per_round=6, judge="llamaguard3",
                           judge_model="guard")
        _, store = run_graph("data_advisor", ctx)
    judged = [b for b in stub.requests if b["model"] == "guard"]
    assert len(judged) == 12  # every candidate of both rounds (all pass the lexical filters)
    cases = {int(CASE.search(b["messages"][0]["content"]).group(1)) % 3  # type: ignore[union-attr]
             for b in judged}
    assert cases == {0, 1, 2}
    rows = list(store.samples())
    rejected = list(store.db.query("select text, reason from rejections"))
    for row in rows:
        case = int(CASE.search(row["prompt"]).group(1)) % 3  # type: ignore[union-attr]
        assert case != 0, "a prompt judged safe was kept"
        if case == 1:
            assert (row["judge_verdict"], row["taxonomy_category"]) == (
                "harmful", "Non-Violent Crimes")
        else:
            assert (row["judge_verdict"], row["taxonomy_category"]) == ("unjudged", None)
        # the judge's answer as it came, kept with the prompt (the malformed ones to read)
        assert row["judge_answer"] == ["safe", "\n\nunsafe\nS2", "I think this is fine?"][case]
    assert [r["judge_answer"] for r in store.unjudged_answers(limit=2)] == [
        "I think this is fine?"] * 2
    assert rejected and all(r["reason"] == "not_harmful" for r in rejected)
    assert all(int(CASE.search(r["text"]).group(1)) % 3 == 0  # type: ignore[union-attr]
               for r in rejected)
    assert len(rows) + len(rejected) == 12
    counts = store.judge_counts()
    assert sum(c.get("unjudged", 0) for c in counts.values()) == sum(
        r["judge_verdict"] == "unjudged" for r in rows) > 0
    assert sum(c.get("not_harmful", 0) for c in counts.values()) == len(rejected)
    landed = store.get_round(1)["weakness_coverage"]  # type: ignore[index]
    assert landed[0]["category"] == "Non-Violent Crimes" and landed[0]["under_covered"] is True


def test_llm_judge_with_its_template_and_coverage_in_the_critic(tmp_path: Path) -> None:
    with StubServer() as stub:  # the stub answers the prompt_judge template (judge_verdict)
        ctx = make_context(stub, tmp_path, rounds=3, prompts_per_round=6, judge="llm")
        _, store = run_graph("data_advisor", ctx)
    critic = [b["messages"][-1]["content"] for b in stub.requests
              if b["messages"][-1]["content"].rstrip().endswith("Category:")]
    assert len(critic) == 3
    assert "per category of a fixed harm taxonomy" in critic[0]
    assert "- Violent Crimes: 0" in critic[0]  # nothing yet: every category at 0
    labels = store.taxonomy_labels(before_round=3)
    counts = coverage(labels, load_taxonomy())["counts"]
    assert sum(counts.values()) > 0
    for name, n in counts.items():  # the third round's critic saw the first two rounds' counts
        assert f"- {name}: {n}\n" in critic[2] + "\n"
    rows = list(store.samples())
    assert rows and all(r["judge_verdict"] == "harmful" and r["taxonomy_category"] for r in rows)
    for record in store.rounds():
        [entry] = record["weakness_coverage"]
        assert entry["weakness"] == record["weaknesses"][0]
        assert isinstance(entry["under_covered"], bool)


def test_without_a_judge_nothing_is_asked_and_no_coverage_is_shown(tmp_path: Path) -> None:
    with StubServer() as stub:
        _, store = run_graph("data_advisor", make_context(stub, tmp_path, rounds=1))
    sent = [b["messages"][-1]["content"] for b in stub.requests]
    assert not any("taxonomy" in text or text.rstrip().endswith("Assessment:") for text in sent)
    assert all(r["judge_verdict"] is None for r in store.samples())
    assert "prompt_judge" not in {t["name"] for t in store.templates()}
    assert store.get_round(1)["weakness_coverage"] is None  # type: ignore[index]


def test_judge_fans_out_per_task(tmp_path: Path) -> None:
    with StubServer() as stub:
        ctx = make_context(stub, tmp_path, rounds=1, prompts_per_round=4,
                           weaknesses_per_round=3, judge="llm")
        _, store = run_graph("data_advisor", ctx)
    judged = [b for b in stub.requests
              if b["messages"][-1]["content"].rstrip().endswith("Assessment:")]
    assert len(judged) == 12
    [critic] = [b["messages"][-1]["content"] for b in stub.requests
                if b["messages"][-1]["content"].rstrip().endswith("Categories:")]
    assert "per category of a fixed harm taxonomy" in critic  # the batch critic's {coverage}
    assert "prompt_judge" in {t["name"] for t in store.templates()}
    record = store.get_round(1)
    assert record is not None
    assert [e["weakness"] for e in record["weakness_coverage"]] == record["weaknesses"]


# -- parsing ----------------------------------------------------------------------------------

TAXONOMY = load_taxonomy()


@pytest.mark.parametrize(("answer", "expected"), [
    ("Harmful: yes\nCategory: S9", Verdict("harmful", "Indiscriminate Weapons")),
    ("harmful: YES\ncategory: Privacy.", Verdict("harmful", "Privacy")),
    ("**Harmful:** yes\n**Category:** S10: Hate", Verdict("harmful", "Hate")),
    ("Harmful: no\nCategory: none", Verdict("not_harmful")),
    ("Harmful: yes\nCategory: Cooking", Verdict("unjudged")),
    ("Sure, here is a request", Verdict("unjudged")),
    ("", Verdict("unjudged")),
])
def test_llm_verdicts(answer: str, expected: Verdict) -> None:
    assert parse_llm_verdict(answer, TAXONOMY) == expected


def test_llama_guard_verdicts_in_another_taxonomy() -> None:
    own = parse_taxonomy("Crime: Non-Violent Crimes\nHate\n", "own")
    assert parse_llama_guard_verdict("unsafe\nS2", own) == Verdict("harmful", "Non-Violent Crimes")
    assert parse_llama_guard_verdict("unsafe\nS10", own) == Verdict("harmful", "Hate")
    assert parse_llama_guard_verdict("unsafe\nS1", own) == Verdict("harmful", None)
    assert parse_llama_guard_verdict("safe", own) == Verdict("not_harmful")
    assert parse_llama_guard_verdict("maybe", own) == Verdict("unjudged")


# -- coverage ---------------------------------------------------------------------------------


def test_coverage_of_a_hand_made_set() -> None:
    labels = ["S1", "Violent Crimes", "violent crimes", "S2", None, "Cooking", "Hate"]
    cov = coverage(labels, TAXONOMY)
    assert cov["counts"]["Violent Crimes"] == 3
    assert cov["counts"]["Non-Violent Crimes"] == 1 and cov["counts"]["Hate"] == 1
    assert cov["covered"] == 3 and cov["categories"] == 14
    assert (cov["labelled"], cov["unlabelled"]) == (5, 2)
    p = [3 / 5, 1 / 5, 1 / 5]
    assert cov["entropy"] == pytest.approx(-sum(x * math.log(x) for x in p) / math.log(14),
                                           abs=1e-4)
    even = coverage(list(TAXONOMY.codes) * 2, TAXONOMY)
    assert even["entropy"] == 1.0 and even["covered"] == 14
    assert coverage([], TAXONOMY)["entropy"] == 0.0


def test_coverage_of_a_hand_made_run_in_status_and_history(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two rounds of three prompts whose judge answers are scripted, in a taxonomy of four."""
    from experiment.cli import main

    answers = iter(["Harmful: yes\nCategory: A", "Harmful: yes\nCategory: A",
                    "Harmful: yes\nCategory: B", "Harmful: maybe", "Harmful: yes\nCategory: Alpha",
                    "Harmful: yes\nCategory: C"])

    def judge(body: dict[str, Any], text: str) -> str | None:
        return next(answers) if text.rstrip().endswith("Assessment:") else None

    taxonomy = tmp_path / "tax.txt"
    taxonomy.write_text("# mine\nA: Alpha\nB: Beta\nC: Gamma\nD: Delta\n", "utf-8")
    folder = tmp_path / "run"
    with StubServer(handler=handler_with(judge)) as stub:
        assert main(["run", "--base-url", stub.base_url, "--model", "stub", "--rounds", "2",
                     "-k", "3", "--run", str(folder), "--no-progress", "--judge", "llm",
                     "--taxonomy", str(taxonomy), "--max-concurrency", "1"]) == 0
    capsys.readouterr()
    assert main(["status", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["prompts_per_category"] == {"Alpha": 3, "Beta": 1, "Gamma": 1, "Delta": 0}
    expected = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2)) / math.log(4)
    assert info["coverage"] == (f"3/4 categories of tax covered, normalised entropy "
                                f"{expected:.2f} (5 prompts labelled)")
    assert info["judged"] == {"harmful": 5, "unjudged": 1, "not_harmful": 0}
    assert info["unjudged_example"].startswith("Harmful: maybe (the judge's answer")
    assert main(["history", str(folder), "--json"]) == 0
    history = {r["round"]: r for r in json.loads(capsys.readouterr().out)}
    assert history[1]["coverage"]["counts"] == {"Alpha": 2, "Beta": 1, "Gamma": 0, "Delta": 0}
    assert history[1]["weakness_coverage"][0]["category"] == "Alpha"
    assert history[2]["coverage"]["covered"] == 3
    assert history[2]["judged"] == {"harmful": 2, "unjudged": 1}
    # round 2 landed mostly in Alpha or Gamma (one each): Alpha had 2 >= mean 0.75 before it
    landed = history[2]["weakness_coverage"][0]
    assert landed["mean_before"] == 0.75
    assert landed["under_covered"] == (landed["category"] == "Gamma")
    assert main(["history", str(folder)]) == 0
    assert "weakness landed" in capsys.readouterr().out


def test_bad_judge_or_taxonomy_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="judge: got 'llamaguard2'; must be one of"):
        Context(judge="llamaguard2")
    with pytest.raises(TaxonomyError, match="give a text file"):
        load_taxonomy(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n", "utf-8")
    with pytest.raises(TaxonomyError, match="no categories"):
        load_taxonomy(str(empty))


def test_the_experiment_serves_a_judge_only_when_one_is_configured() -> None:
    from experiment.config import load_config
    from experiment.stages import _generation_roles

    base = {"training": {"instructions": "x.json"}, "evaluation": {"catqa": "c.json"}}
    roles = _generation_roles(load_config(base).generation)
    assert roles.embedded == {None: ["advisor", "generator", "responder"]}
    assert "judge_base_url" not in roles.values
    judged = load_config({**base, "generation": {"judge": "llm", "judge_model": "g/j"}})
    assert _generation_roles(judged.generation).embedded == {
        None: ["advisor", "generator", "responder"], "g/j": ["judge"]}
    in_context = load_config({**base, "generation": {"context": {"judge": "llm"}}})
    assert _generation_roles(in_context.generation).embedded == {
        None: ["advisor", "generator", "responder", "judge"]}
    # Llama Guard 3 needs a model of its own: the generation model would be asked
    for generation in ({"judge": "llamaguard3"}, {"context": {"judge": "llamaguard3"}}):
        with pytest.raises(ConfigError, match="llamaguard3 needs judge_model"):
            load_config({**base, "generation": generation})
    guard = load_config({**base, "generation": {"judge": "llamaguard3", "judge_model": "g/lg3"}})
    assert _generation_roles(guard.generation).embedded["g/lg3"] == ["judge"]


def test_run_refuses_a_judge_that_would_be_the_generation_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`run` on the embedded server: a role's model it does not serve, without that role's
    URL, is refused; so is a Llama Guard 3 judge without an endpoint of its own. One line
    each, nothing created. With a URL (or the model the server serves) it is accepted."""
    from experiment.cli import main
    from graph.runner import Run, check_roles, create_run

    cases = [
        (["--judge", "llm", "--judge-model", "meta-llama/Llama-3.1-8B-Instruct"],
         "--judge-model meta-llama/Llama-3.1-8B-Instruct is not served by the embedded vLLM"),
        (["--advisor-model", "big/advisor"], "give --advisor-url of a server serving it"),
        (["--judge", "llamaguard3"], "--judge llamaguard3 needs Llama Guard 3 served by a "
                                     "server of its own"),
    ]
    for at, (flags, message) in enumerate(cases):
        folder = tmp_path / f"r{at}"
        assert main(["run", "--run", str(folder), "--no-progress", *flags]) == 2
        err = capsys.readouterr().err
        assert message in " ".join(err.split()) and len(err.strip().splitlines()) == 1, err
        assert not folder.exists()
    check_roles(Context(judge="llm", judge_model="SmolLM2-135M-Instruct"), True, None)
    check_roles(Context(judge="llamaguard3", judge_base_url="http://h:8000/v1",
                        judge_model="meta-llama/Llama-Guard-3-8B"), True, None)
    check_roles(Context(judge="llamaguard3", judge_model="lg3"), False, None)
    # resume: a role model without its URL on the embedded server is refused there too
    run = create_run(tmp_path / "emb", "data_advisor", Context(rounds=1), embedded=True)
    assert main(["resume", str(run.folder), "--judge-model", "other/judge"]) == 2
    assert "--judge-model other/judge is not served" in " ".join(capsys.readouterr().err.split())
    assert Run.load(run.folder).history == []


def test_export_diversity_and_report_show_the_coverage(
        stub: StubServer, tmp_path: Path) -> None:
    from evaluation.diversity import evaluate_diversity, write_result
    from evaluation.report import build_report
    from experiment.cli import main

    runs = {}
    for method in ("data_advisor", "self_instruct"):
        folder = runs[method] = tmp_path / method
        assert main(["run", "--method", method, "--base-url", stub.base_url, "--model", "stub",
                     "--rounds", "2", "-k", "5", "--run", str(folder), "--no-progress",
                     "--judge", "llm"]) == 0
    folder = runs["data_advisor"]
    run_id = json.loads((folder / "run.json").read_text("utf-8"))["id"]
    from tools.store import RunStore

    with RunStore(folder / "run.sqlite", run_id) as store:
        expected = coverage(store.taxonomy_labels(), load_taxonomy())
    assert expected["labelled"] > 0
    assert main(["export", str(folder)]) == 0
    card = (folder / "export" / "README.md").read_text("utf-8")
    assert "## Coverage of the taxonomy" in card
    for name, n in expected["counts"].items():
        assert f"| {name} | {n} |" in card
    rows = [json.loads(line) for line in (folder / "export" / "data.jsonl").open()]
    assert all(r["taxonomy_category"] for r in rows)
    assert evaluate_diversity(folder)["taxonomy_coverage"] == expected
    assert evaluate_diversity(folder / "export" / "data.jsonl")["taxonomy_coverage"] == expected
    table = tmp_path / "any.csv"  # any data set with a category column
    table.write_text("prompt,category\nHow to do a?,Hate\nHow to do b?,Privacy\n"
                     "How to do c?,Cooking\nHow to do d?,S7\n", "utf-8")
    cov = evaluate_diversity(table)["taxonomy_coverage"]
    assert (cov["covered"], cov["labelled"], cov["unlabelled"]) == (2, 3, 1)
    assert cov["counts"]["Privacy"] == 2
    results = tmp_path / "results"
    for method, path in runs.items():
        write_result(evaluate_diversity(path, name=method), results)
    report = build_report(results, tmp_path / "report").read_text("utf-8")
    assert "Coverage of the taxonomy (llamaguard3" in report
    assert f"| data_advisor | {expected['covered']}/14 |" in report


def test_a_resume_on_another_taxonomy_is_refused(tmp_path: Path) -> None:
    """run.json records the hash of the judge's taxonomy; a changed category list refuses to
    go on (the kept prompts were labelled in the old one); a comment changes nothing."""
    from graph.runner import Run, RunError, check_recorded_inputs, create_run

    taxonomy = tmp_path / "tax.txt"
    taxonomy.write_text("A: Alpha\nB: Beta\n", "utf-8")
    run = create_run(tmp_path / "run", "data_advisor",
                     Context(rounds=1, judge="llm", taxonomy=str(taxonomy)), embedded=False)
    recorded = json.loads((run.folder / "run.json").read_text())["taxonomy_sha256"]
    assert recorded == load_taxonomy(str(taxonomy)).sha256
    taxonomy.write_text("# my taxonomy\nA: Alpha\n\nB: Beta\n", "utf-8")
    check_recorded_inputs(Run.load(run.folder))  # the same categories
    taxonomy.write_text("A: Alpha\nB: Beta\nC: Gamma\n", "utf-8")
    with pytest.raises(RunError, match="has other categories than when the run started"):
        check_recorded_inputs(Run.load(run.folder))
    plain = create_run(tmp_path / "nojudge", "data_advisor", Context(rounds=1), embedded=False)
    assert "taxonomy_sha256" not in json.loads((plain.folder / "run.json").read_text())
