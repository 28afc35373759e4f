"""Tests for evaluation.report: Markdown tables and PNG plots from result dicts and files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from evaluation.report import build_report, load_results

REFUSAL = "refusal-strings (fallback: measures refusal, not harmfulness)"
LABELS = ("base", "self_instruct", "data_advisor")


def adapter(label: str) -> str | None:
    return None if label == "base" else f"adapters/{label}"


def safety(dataset: str, label: str, harmful: float, cats: dict[str, float],
           judge: str = REFUSAL) -> dict[str, Any]:
    return {"kind": "safety", "dataset": dataset, "label": label, "model": "SmolLM2-135M-Instruct",
            "adapter": adapter(label), "judge": judge,
            "n": 10 * len(cats), "safety_score": 1 - harmful, "harmful_rate": harmful,
            "per_category": {c: {"n": 10, "harmful_rate": r} for c, r in cats.items()},
            "malformed": 0, "empty_responses": 1}


def overrefusal(label: str, rate: float) -> dict[str, Any]:
    return {"kind": "overrefusal", "dataset": "xstest", "label": label,
            "model": "SmolLM2-135M-Instruct", "adapter": adapter(label), "judge": REFUSAL,
            "n": 250, "refusal_rate": rate}


def utility(label: str, acc: float) -> dict[str, Any]:
    return {"kind": "utility", "dataset": "mmlu", "label": label, "model": "SmolLM2-135M-Instruct",
            "adapter": adapter(label), "method": "loglik", "backend": "endpoint", "n": 1531,
            "accuracy": acc, "unparsed": 2,
            "per_subject": {"anatomy": {"n": 14, "accuracy": acc}},
            "predictions_file": f"utility-mmlu-{label}.jsonl"}


def diversity(name: str, base: float, size: int | None = None) -> dict[str, Any]:
    curve = {str(n): round(base + 0.1 * (n - 1) / 7, 4) for n in range(1, 9)}
    at = None
    if size:
        at = {"size": size, "seeds": 5,
              "values": {k: round(v + 0.0123, 4) for k, v in curve.items()}}
    return {"kind": "diversity", "name": name, "source": f"runs/{name}", "n_prompts": 200,
            "distinct": curve, "distinct_at_size": at, "categories": 12,
            "prompts_per_category": {"a": 100, "b": 100}, "near_duplicate_rate": 0.015}


def full_results() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, label in enumerate(LABELS):
        out.append(safety("catqa", label, 0.5 - 0.1 * i,
                          {"Illegal Activity": 0.6 - 0.1 * i, "Hate/Harass/Violence": 0.4}))
        out.append(safety("beavertails", label, 0.3 - 0.05 * i,
                          {"animal_abuse": 0.2, "controversial_topics,politics": 0.1 * i}))
        out.append(overrefusal(label, 0.04 + 0.01 * i))
        out.append(utility(label, 0.3 + 0.01 * i))
    out.append(diversity("self_instruct", 0.3))
    out.append(diversity("data_advisor", 0.5, size=100))
    return out


def check_png(path: Path, min_size: int = 200) -> None:
    assert path.exists()
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        assert img.width >= min_size and img.height >= min_size


def test_full_report_tables_and_figures(tmp_path: Path) -> None:
    path = build_report(full_results(), tmp_path / "report")
    assert path == tmp_path / "report" / "report.md"
    text = path.read_text("utf-8")
    # Table 1: every label with its numbers (percentages, one decimal)
    table1 = text.split("## Table 1")[1].split("##")[0]
    for label in LABELS:
        assert f"| {label} |" in table1
    assert "safety catqa ↑ (refusal-strings)" in table1
    assert "safety beavertails ↑ (refusal-strings)" in table1
    assert "over-refusal xstest ↓ (refusal-strings)" in table1
    assert "MMLU accuracy ↑" in table1
    row = next(line for line in table1.splitlines() if line.startswith("| data_advisor |"))
    for number in ("70.0", "80.0", "6.0", "32.0"):  # catqa, beavertails, xstest, MMLU
        assert f"| {number} " in row + " "
    assert "measures refusals, not harm" in table1
    # categories: one table per safety data set, with the rates
    catqa = text.split("## Harmful rate per category: catqa")[1].split("##")[0]
    assert "| Illegal Activity | 10 | 60.0 | 50.0 | 40.0 |" in catqa
    beaver = text.split("## Harmful rate per category: beavertails")[1].split("##")[0]
    assert "controversial_topics,politics" in beaver and "| 20.0 |" in beaver
    # diversity: both curves, at-size row, near-duplicates
    div = text.split("## Diversity")[1].split("##")[0]
    assert "| self_instruct | 200 | 0.300 |" in div
    assert "| data_advisor @ 100 (5 seeds) | 100 | 0.512 |" in div
    assert "| 1.5 |" in div
    # details: unparsed and malformed counts
    assert "unparsed 2" in text and "malformed 0, empty 1" in text
    for name in ("safety_utility.png", "harmful_rate_catqa.png", "harmful_rate_beavertails.png",
                 "distinct_n.png"):
        check_png(tmp_path / "report" / name)
        assert f"]({name})" in text


def test_partial_report_renders(tmp_path: Path) -> None:
    path = build_report([utility("base", 0.25), utility("data_advisor", 0.27)], tmp_path)
    text = path.read_text("utf-8")
    assert "| base | SmolLM2-135M-Instruct | 25.0 |" in text
    assert "Harmful rate" not in text and "Diversity" not in text
    check_png(tmp_path / "safety_utility.png")
    assert not (tmp_path / "distinct_n.png").exists()

    only_div = build_report([diversity("data_advisor", 0.4)], tmp_path / "div")
    text = only_div.read_text("utf-8")
    assert "Table 1" not in text and "| data_advisor | 200 | 0.400 |" in text
    check_png(tmp_path / "div" / "distinct_n.png")

    empty = build_report([], tmp_path / "empty")
    assert "No results to report." in empty.read_text("utf-8")


def test_reads_folder_glob_and_paths(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    for r in full_results():
        name = r.get("name") or f"{r['dataset']}-{r['label']}"
        (results / f"{r['kind']}-{name}.json").write_text(json.dumps(r), "utf-8")
    (results / "run.json").write_text(json.dumps({"method": "data_advisor"}), "utf-8")
    (results / "broken.json").write_text("{", "utf-8")
    (results / "utility-mmlu-base.jsonl").write_text('{"id": "x"}\n', "utf-8")

    loaded, skipped = load_results(results)
    assert len(loaded) == len(full_results())
    assert len(skipped) == 2 and any("broken.json" in s for s in skipped)
    assert len(load_results(str(results / "utility-*.json"))[0]) == 3
    files = sorted(results.glob("safety-*.json"))
    assert len(load_results(files)[0]) == 6

    text = build_report(results, tmp_path / "out").read_text("utf-8")
    assert "skipped" in text and "| data_advisor |" in text
    text = build_report(str(results / "*.json"), tmp_path / "out2").read_text("utf-8")
    assert "safety catqa" in text
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "missing")


def test_mixed_judges_and_duplicates_are_flagged(tmp_path: Path) -> None:
    results = [safety("catqa", "base", 0.5, {"x": 0.5}),
               safety("catqa", "data_advisor", 0.2, {"x": 0.2},
                      judge="llamaguard3 (meta-llama/Llama-Guard-3-8B)"),
               utility("base", 0.2), utility("base", 0.3)]
    text = build_report(results, tmp_path).read_text("utf-8")
    assert "safety catqa ↑ (mixed judges)" in text
    assert "judges differ, not comparable" in text
    assert "llamaguard3 (meta-llama/Llama-Guard-3-8B)" in text
    assert "more than one utility result" in text
    row = next(line for line in text.splitlines() if line.startswith("| base |"))
    assert "| 30.0 |" in row  # the last one wins
