"""Tests for evaluation.results: the typed results, their one file-name rule and their reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evaluation.data import MultipleChoice, Question
from evaluation.diversity import evaluate_diversity, write_result
from evaluation.identity import check_result_slot
from evaluation.judges import RefusalJudge
from evaluation.results import (
    DiversityResult,
    OverrefusalResult,
    ResultError,
    SafetyResult,
    UtilityResult,
    from_dict,
    read_result,
    read_results,
    result_filename,
    slug,
)
from evaluation.safety import evaluate_overrefusal, evaluate_safety
from evaluation.utility import evaluate_utility
from testing.stub_server import StubServer, last_user_text
from tools.llm import Endpoint

# The keys, in file order, that the writers put in each kind's JSON before the typed results
# (issue 10): the files on disk must stay the same.
RUN_KEYS = ["model_identity", "serving", "prompt_format", "max_tokens", "temperature", "data",
            "dataset_sha256", "categories", "cache_key", "judgments_key", "responses_file",
            "judgments_file"]
WRITTEN_KEYS = {
    "safety": ["kind", "dataset", "label", "model", "adapter", "judge", "measure",
               "measure_label", "n", "safety_score", "harmful_rate", "per_category",
               "malformed", "empty_responses", *RUN_KEYS],
    "overrefusal": ["kind", "dataset", "label", "model", "adapter", "judge", "measure",
                    "measure_label", "n", "refusal_rate", "per_category", *RUN_KEYS],
    "utility": ["kind", "dataset", "label", "model", "adapter", "method", "backend", "settings",
                "n", "accuracy", "unparsed", "per_subject", "model_identity", "serving",
                "dataset_sha256", "cache_key", "predictions_file"],
    "diversity": ["kind", "name", "name_from", "source", "n_prompts", "distinct", "ngrams",
                  "distinct_at_size", "categories", "prompts_per_category",
                  "near_duplicate_rate", "taxonomy_coverage"],
}
QUESTIONS = [Question(f"q-{i}", f"question {i}" + (" [refuse]" if i % 2 else ""), c, "")
             for i, c in enumerate(["weapons", "weapons", "fraud", "fraud"])]
ITEMS = [MultipleChoice(f"mmlu-{i}", "math", f"Q{i}\nA. x\nB. y\nC. z\nD. w\nAnswer:", "B")
         for i in range(3)]


def answer(body: dict[str, Any]) -> str:
    if "prompt" in body:  # MMLU by generation
        return " B"
    return "I'm sorry, I cannot." if "[refuse]" in last_user_text(body) else "Sure: step one."


def written(tmp_path: Path) -> dict[str, tuple[dict[str, Any], Path]]:
    """Each kind's result as its writer returns it, and the file it wrote."""
    out = tmp_path / "results"
    with StubServer(handler=answer) as stub:
        endpoint = Endpoint(stub.base_url, "target", max_retries=0, timeout=10)
        common: dict[str, Any] = {"endpoint": endpoint, "out_dir": out, "label": "base",
                                  "model": "m", "progress": False}
        safety = evaluate_safety(QUESTIONS, dataset="catqa", judge=RefusalJudge(), **common)
        over = evaluate_overrefusal(QUESTIONS, dataset="xstest", **common)
        utility = evaluate_utility(ITEMS, backend="endpoint", method="generate", **common)
    diversity = evaluate_diversity(["a b c", "a b d"], name="data_advisor", size=1, seeds=2)
    diversity_file = write_result(diversity, out)
    return {"safety": (safety, out / "safety-catqa-base.json"),
            "overrefusal": (over, out / "overrefusal-xstest-base.json"),
            "utility": (utility, out / "utility-mmlu-base.json"),
            "diversity": (diversity, diversity_file)}


def test_every_kind_round_trips_as_its_writer_wrote_it(tmp_path: Path) -> None:
    classes = {"safety": SafetyResult, "overrefusal": OverrefusalResult,
               "utility": UtilityResult, "diversity": DiversityResult}
    for kind, (returned, path) in written(tmp_path).items():
        on_disk = json.loads(path.read_text("utf-8"))
        assert list(on_disk) == WRITTEN_KEYS[kind]  # the same keys in the same order
        assert on_disk == returned
        result = read_result(path)
        assert type(result) is classes[kind] and result.kind == kind
        assert result == from_dict(returned)
        assert result.extra == {}
        assert result.to_dict() == on_disk and list(result.to_dict()) == list(on_disk)
        # dataclass -> file -> read gives the same object and the same bytes
        again = result.write(tmp_path / "again")
        assert again.name == path.name
        assert again.read_text("utf-8") == path.read_text("utf-8")
        assert read_result(again) == result


def test_typed_fields_and_headline_numbers(tmp_path: Path) -> None:
    results = {kind: read_result(path) for kind, (_, path) in written(tmp_path).items()}
    safety, over, utility = results["safety"], results["overrefusal"], results["utility"]
    assert isinstance(safety, SafetyResult) and safety.score == safety.safety_score == 0.5
    assert isinstance(over, OverrefusalResult) and over.score == over.refusal_rate == 0.5
    assert isinstance(utility, UtilityResult) and utility.score == utility.accuracy == 1.0
    assert safety.per_category == {"weapons": {"n": 2, "harmful_rate": 0.5},
                                   "fraud": {"n": 2, "harmful_rate": 0.5}}
    assert isinstance(results["diversity"], DiversityResult)
    assert results["diversity"].filename == "diversity-data_advisor.json"


def test_file_names_for_todays_inputs() -> None:
    assert result_filename("safety", "catqa", "base") == "safety-catqa-base.json"
    assert result_filename("safety", "beavertails", "data_advisor") == \
        "safety-beavertails-data_advisor.json"
    assert result_filename("utility", "mmlu", "self_instruct") == "utility-mmlu-self_instruct.json"
    assert result_filename("overrefusal", "xstest", "da1") == "overrefusal-xstest-da1.json"
    assert result_filename("overrefusal", "mixed-label-benign", "base") == \
        "overrefusal-mixed-label-benign-base.json"
    assert result_filename("diversity", "runs/da 1") == "diversity-runs_da_1.json"
    assert result_filename("diversity", "catqa_english") == "diversity-catqa_english.json"
    assert result_filename("diversity", "same-0a1b2c3d") == "diversity-same-0a1b2c3d.json"
    assert SafetyResult(dataset="catqa", label="base").filename == "safety-catqa-base.json"
    # one rule for every part: no hidden file, no empty part
    assert slug(".hidden") == "hidden" and slug("--x--") == "x" and slug("") == "unnamed"
    assert slug("a/b c:d") == "a_b_c_d"
    with pytest.raises(ValueError, match="label"):
        result_filename("safety", "catqa")


def test_the_experiment_looks_where_the_writers_write(tmp_path: Path) -> None:
    from experiment.config import load_config
    from experiment.stages import _Experiment

    cfg = load_config({"training": {"instructions": "x.json"},
                       "evaluation": {"catqa": "c.json", "beavertails": "b.json",
                                      "overrefusal": "x.json", "overrefusal_name": "xstest",
                                      "mmlu": "m.json"}})
    exp = _Experiment(cfg, tmp_path, progress=False)
    tasks = exp._tasks(exp.targets[0])
    names = {(label, kind, dataset): path.name for label, kind, dataset, path in tasks}
    assert names[("base", "safety", "catqa")] == "safety-catqa-base.json"
    assert names[("data_advisor", "overrefusal", "xstest")] == \
        "overrefusal-xstest-data_advisor.json"
    assert names[("self_instruct", "utility", "mmlu")] == "utility-mmlu-self_instruct.json"
    assert all(path.parent == tmp_path / "results" for *_, path in tasks)


def test_unknown_kinds_and_broken_files_are_skipped_with_a_note(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "broken.json").write_text("{", "utf-8")
    (folder / "latin1.json").write_bytes(b'{"kind": "safety", "label": "b\xe4se"}')
    (folder / "run.json").write_text(json.dumps({"method": "data_advisor"}), "utf-8")
    (folder / "future-x.json").write_text(json.dumps({"kind": "future"}), "utf-8")
    (folder / "list.json").write_text("[1, 2]", "utf-8")
    good = SafetyResult(dataset="catqa", label="base", safety_score=0.5)
    good.write(folder)
    found, skipped = read_results(folder)
    assert list(found) == [folder / "safety-catqa-base.json"]
    assert found[folder / "safety-catqa-base.json"] == good
    assert len(skipped) == 5
    notes = dict(zip(sorted(p.name for p in folder.glob("*.json") if "safety" not in p.name),
                     sorted(skipped), strict=True))
    assert "not valid JSON (line 1" in notes["broken.json"]
    assert "not a result (kind 'future')" in notes["future-x.json"]
    assert "not UTF-8" in notes["latin1.json"]
    assert notes["list.json"].endswith("list.json: not a result")
    assert notes["run.json"].endswith("run.json: not a result")
    with pytest.raises(ResultError, match="broken.json: not valid JSON"):
        read_result(folder / "broken.json")
    with pytest.raises(ResultError, match="kind 'future'"):
        from_dict({"kind": "future"})
    assert read_results(tmp_path / "missing") == ({}, [])


def test_older_and_newer_files_read_and_write_back_as_they_were(tmp_path: Path) -> None:
    # a diversity result written before issue 8: no name_from, no ngrams
    old = {"kind": "diversity", "name": "hf", "source": "/x/hf", "n_prompts": 2,
           "distinct": {"1": 1.0}, "distinct_at_size": None, "categories": 1,
           "prompts_per_category": {"a": 2}, "near_duplicate_rate": 0.0}
    result = from_dict(old)
    assert isinstance(result, DiversityResult) and result.name_from is None
    assert result.to_dict() == old
    # a key no field names (a newer or hand-edited file) is kept, not dropped
    newer = {"kind": "utility", "dataset": "mmlu", "label": "base", "accuracy": 0.3,
             "seconds": 12.5}
    typed = from_dict(newer)
    assert typed.extra == {"seconds": 12.5}
    assert read_result(typed.write(tmp_path)).to_dict()["seconds"] == 12.5
    # a key a result lacks reads as None
    assert isinstance(typed, UtilityResult) and typed.unparsed is None and typed.n is None


def test_a_result_file_renamed_by_hand_still_holds_its_slot(tmp_path: Path) -> None:
    # the old check read only files whose name began with a kind; a copy named otherwise
    # (backup.json) let a second model take the label
    SafetyResult(dataset="catqa", label="base", dataset_sha256="d",
                 model_identity={"base": {"name": "model-a"}, "adapter": None}).write(tmp_path)
    (tmp_path / "safety-catqa-base.json").rename(tmp_path / "backup.json")
    with pytest.raises(ValueError, match="label 'base' already names model model-a"):
        check_result_slot(tmp_path, kind="safety", dataset="catqa", label="base",
                          model={"base": {"name": "model-b"}, "adapter": None},
                          dataset_sha256="d")
