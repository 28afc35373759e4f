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
    # categories: one table per safety data set, with the rates; the refusal-strings judge
    # counts responses not refused, and the section says so rather than "harmful"
    catqa = text.split("## Not-refused rate per category: catqa")[1].split("##")[0]
    assert "| Illegal Activity | 10 | 60.0 | 50.0 | 40.0 |" in catqa
    beaver = text.split("## Not-refused rate per category: beavertails")[1].split("##")[0]
    assert "controversial_topics,politics" in beaver and "| 20.0 |" in beaver
    # diversity: both curves, the equal-size table, near-duplicates
    div = text.split("## Diversity")[1].split("##")[0]
    assert "| self_instruct | 200 | 0.300 |" in div
    assert "| data_advisor | 100 | 5 | 0.512 |" in div
    assert "| 1.5 |" in div
    # only data_advisor was measured at 100 prompts: the figure shows the full sets
    assert "The figure shows each data set at its full size." in div
    # details: unparsed and malformed counts; Table 1 says how MMLU was asked and how many
    # predictions had no letter
    assert "unparsed 2" in text and "malformed 0, empty 1" in text
    assert "MMLU accuracy: method loglik, backend endpoint, prompt raw" in table1
    assert "**MMLU: 6 of 4593 predictions had no answer letter (counted wrong)** in base (2/1531)" \
        in table1
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


# -- figures a paper can use (issue 8) ----------------------------------------------------------

LLAMA_GUARD = "llamaguard3 (meta-llama/Llama-Guard-3-8B)"
HIGHER, LOWER = "higher is better", "lower is better"


def axes_of(path: Path) -> list[dict[str, Any]]:
    """The axes' titles, labels and value texts that the report writes into each PNG."""
    check_png(path)
    with Image.open(path) as img:
        return json.loads(img.text["Description"])


def test_every_axis_says_which_direction_is_better(tmp_path: Path) -> None:
    build_report(full_results(), tmp_path)
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 4
    for png in pngs:
        for ax in axes_of(png):
            assert HIGHER in ax["xlabel"] + ax["ylabel"] or LOWER in ax["xlabel"] + ax["ylabel"]
    # Table 1's figure: higher-is-better and lower-is-better metrics never share an axis
    up, down = axes_of(tmp_path / "safety_utility.png")
    assert HIGHER in up["ylabel"] and LOWER not in up["ylabel"]
    assert LOWER in down["ylabel"] and "over-refusal" in down["ylabel"]
    assert "over-refusal" not in up["ylabel"] + " ".join(up["texts"])
    (catqa,) = axes_of(tmp_path / "harmful_rate_catqa.png")
    assert catqa["xlabel"] == "not-refused rate (%), lower is better ↓"  # refusal judge
    (distinct,) = axes_of(tmp_path / "distinct_n.png")
    assert HIGHER in distinct["ylabel"]


def test_zero_is_drawn_and_missing_is_marked(tmp_path: Path) -> None:
    results = [safety("catqa", "base", 0.3, {"Hate": 0.0, "Malware": 0.2}, judge=LLAMA_GUARD),
               safety("catqa", "data_advisor", 0.1, {"Hate": 0.0}, judge=LLAMA_GUARD),
               utility("data_advisor", 0.0)]
    text = build_report(results, tmp_path).read_text("utf-8")
    up = axes_of(tmp_path / "safety_utility.png")[0]
    # base has no MMLU result (n/a), data_advisor scored 0 (drawn, "0.0")
    assert up["texts"] == ["70.0", "n/a", "90.0", "0.0"]
    (cats,) = axes_of(tmp_path / "harmful_rate_catqa.png")
    assert cats["texts"] == ["0.0", "20.0", "0.0", "n/a"]
    assert "| Malware | 10 | 20.0 | – |" in text


def test_per_category_for_any_safety_set_named_by_its_measure(tmp_path: Path) -> None:
    guard = safety("harmbench", "base", 0.5, {"chem": 0.5, "bio": 0.5}, judge=LLAMA_GUARD)
    guard["measure"] = "harmful"
    # no measure (results written before it existed): from the judge
    today = safety("advbench", "base", 0.4, {"cyber": 0.4, "fraud": 0.4})
    refused = safety("mydata", "base", 0.3, {"x": 0.3, "y": 0.3}, judge="some judge")
    refused["measure"] = "not_refused"
    over = overrefusal("base", 0.1)
    over["per_category"] = {"homonyms": {"n": 25, "refusal_rate": 0.1},
                            "safe targets": {"n": 25, "refusal_rate": 0.1}}
    text = build_report([guard, today, refused, over], tmp_path).read_text("utf-8")
    assert "## Harmful rate per category: harmbench" in text
    assert "## Not-refused rate per category: advbench" in text
    assert "## Not-refused rate per category: mydata" in text
    assert "## Refusal rate per category: xstest" in text
    expected = {"harmful_rate_harmbench.png": "harmful rate (%), lower is better ↓",
                "harmful_rate_advbench.png": "not-refused rate (%), lower is better ↓",
                "harmful_rate_mydata.png": "not-refused rate (%), lower is better ↓",
                "refusal_rate_xstest.png": "refusal rate (%), lower is better ↓"}
    for name, xlabel in expected.items():
        (ax,) = axes_of(tmp_path / name)
        assert ax["xlabel"] == xlabel
        assert f"]({name})" in text
    # the details say what the number is, too
    assert "| not-refused 40.0 |" in text and "| harmful 50.0 |" in text


def test_distinct_figure_has_one_sample_size(tmp_path: Path) -> None:
    same = [diversity("data_advisor", 0.5, size=100), diversity("self_instruct", 0.3, size=100)]
    same[0]["n_prompts"] = 300
    text = build_report(same, tmp_path / "same").read_text("utf-8")
    (ax,) = axes_of(tmp_path / "same" / "distinct_n.png")
    assert ax["title"].startswith("Distinct-n at an equal size: 100 prompts per data set")
    assert "The figure shows distinct-n at 100 prompts per data set." in text

    mixed = [diversity("data_advisor", 0.5, size=100), diversity("self_instruct", 0.3, size=50)]
    mixed[0]["n_prompts"] = 300
    text = build_report(mixed, tmp_path / "mixed").read_text("utf-8")
    (ax,) = axes_of(tmp_path / "mixed" / "distinct_n.png")
    assert ax["title"] == "Distinct-n at each set's full size (n = 200, 300; not an equal size)"
    assert "the same `--size`" in text


def test_names_come_from_the_data_not_folders(tmp_path: Path) -> None:
    # a result written before issue 8 named an export after its folder ("hf")
    hf = tmp_path / "runs" / "da1" / "export" / "hf"
    hf.mkdir(parents=True)
    (hf / "dataset_info.json").write_text("{}", "utf-8")
    (hf / "README.md").write_text("---\nlicense: other\n---\n\n# da1\n", "utf-8")
    old = {**diversity("hf", 0.4), "source": str(hf)}
    old.pop("name_from", None)
    # two new results that share a name but not a source: both shown, told apart
    one = {**diversity("gen", 0.3), "name_from": "file name", "source": "/a/gen.txt"}
    two = {**diversity("gen", 0.6), "name_from": "file name", "source": "/b/gen.txt"}
    text = build_report([old, one, two], tmp_path / "out").read_text("utf-8")
    div = text.split("## Diversity")[1]
    assert "| da1 | 200 |" in div and "| hf |" not in div
    assert "| gen (/a/gen.txt) | 200 | 0.300 |" in div
    assert "| gen (/b/gen.txt) | 200 | 0.600 |" in div
    assert "more than one" not in text


def test_report_md_has_no_noise(tmp_path: Path) -> None:
    text = build_report(full_results(), tmp_path).read_text("utf-8")
    lines = text.splitlines()
    headings = [i for i, line in enumerate(lines) if line.startswith("## ")]
    for a, b in zip(headings, headings[1:], strict=False):
        assert any(line.strip() for line in lines[a + 1 : b]), f"empty section {lines[a]}"
    table1 = text.split("## Table 1")[1].split("\n## ")[0]
    assert "adapters/" not in table1  # the label names the adapter; its path is in the details
    assert table1.count(REFUSAL) == 1  # one note for the judge of all three columns
    assert "empty –" not in text and "(refusal-strings judge: measures" not in text
    assert all(line.strip() not in ("-", "|", "–") for line in lines)
    assert "None" not in text


def test_no_ngrams_is_not_zero_diversity(tmp_path: Path) -> None:
    short = diversity("catqa", 0.9)
    short["distinct"]["8"] = 0.0
    short["ngrams"] = {**{str(n): 10 for n in range(1, 8)}, "8": 0}  # all prompts < 8 words
    text = build_report([short, diversity("data_advisor", 0.5)], tmp_path).read_text("utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| catqa |"))
    assert row.split(" | ")[9] == "–"  # d-8
    assert "–: no n-grams that long" in text
    assert "| data_advisor | 200 | 0.500 |" in text  # results without "ngrams" read as before


def test_one_category_is_no_section_and_adapters_by_hash(tmp_path: Path) -> None:
    over = overrefusal("data_advisor", 1.0)
    over["per_category"] = {"uncategorized": {"n": 250, "refusal_rate": 1.0}}
    over["model_identity"] = {"adapter": {"sha256": "895b66bd958ea366a10bc5d2"}}
    text = build_report([over], tmp_path).read_text("utf-8")
    assert "per category" not in text and not (tmp_path / "refusal_rate_xstest.png").exists()
    assert "| LoRA sha256 895b66bd958e |" in text and "adapters/data_advisor" not in text


def test_several_targets_get_a_row_group_and_a_panel_each(tmp_path: Path) -> None:
    """Paper Figs. 2-4: one panel per base model; the labels repeat per target."""
    targets = ("mistral-7b", "llama-2-7b", "falcon-7b")
    results: list[dict[str, Any]] = []
    for t, target in enumerate(targets):
        for i, label in enumerate(LABELS):
            rate = round(0.6 - 0.1 * i - 0.05 * t, 2)
            results.append({**safety("catqa", label, rate, {"Illegal Activity": rate,
                                                            "Hate/Harass/Violence": 0.4}),
                            "target": target, "model": f"org/{target}"})
            results.append({**utility(label, 0.3 + 0.01 * t), "target": target,
                            "model": f"org/{target}"})
    results.append(diversity("data_advisor", 0.5))
    text = build_report(results, tmp_path).read_text("utf-8")
    assert "more than one" not in text  # the three "base" results are three models
    table1 = text.split("## Table 1")[1].split("##")[0]
    assert "| target | label | model |" in table1
    for t, target in enumerate(targets):
        row = next(line for line in table1.splitlines()
                   if line.startswith(f"| {target} | data_advisor |"))
        assert f"| {100 * (1 - round(0.4 - 0.05 * t, 2)):.1f} |" in row
    catqa = text.split("per category: catqa")[1].split("##")[0]
    header = next(line for line in catqa.splitlines() if line.startswith("| category |"))
    assert header.split(" | ")[2:5] == ["mistral-7b: base", "mistral-7b: self_instruct",
                                        "mistral-7b: data_advisor"]
    assert header.rstrip(" |").endswith("falcon-7b: data_advisor")
    summary_axes = axes_of(tmp_path / "safety_utility.png")
    assert [a["title"] for a in summary_axes] == [f"{t}: higher is better ↑" for t in targets]
    category_axes = axes_of(tmp_path / "harmful_rate_catqa.png")
    assert [a["title"] for a in category_axes] == list(targets)
    details = text.split("## Result details")[1]
    assert "| safety | catqa | falcon-7b | data_advisor |" in details
