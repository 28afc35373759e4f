"""Export a run's data: JSONL, Parquet and a Hugging Face `datasets` folder with a dataset card.

Rows: ``prompt, response, category, round, method`` plus ids and the models that wrote them.
Only prompts with a response are exported.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from datasets import Dataset

from tools.store import RunStore

FORMATS = ("jsonl", "parquet", "hf")
COLUMNS = (
    "id",
    "prompt",
    "response",
    "category",
    "round",
    "method",
    "generator_model",
    "responder_model",
)


def export_rows(store: RunStore) -> list[dict[str, Any]]:
    """The run's answered samples as export rows."""
    return [
        {
            "id": r["id"],
            "prompt": r["prompt"],
            "response": r["response"],
            "category": r["weakness"],
            "round": r["round"],
            "method": r["method"],
            "generator_model": r["generator_model"],
            "responder_model": r["responder_model"],
        }
        for r in store.samples(with_response=True)
    ]


def dataset_card(name: str, rows: list[dict[str, Any]], run_info: dict[str, Any]) -> str:
    """A Markdown dataset card with YAML metadata, provenance and counts."""
    methods = Counter(r["method"] for r in rows)
    categories = Counter(r["category"] for r in rows if r["category"])
    top = "\n".join(f"| {c} | {n} |" for c, n in categories.most_common(30)) or "| - | - |"
    return f"""---
license: other
task_categories:
- text-generation
tags:
- safety
- alignment
- synthetic
- data-advisor
size_categories:
- n<1K
---

# {name}

Synthetic safety-alignment data generated with **data-advisor**
(Data Advisor, dynamic data curation, arXiv 2410.05269).

**Warning:** the `prompt` column contains harmful requests by design. Use it to train and
evaluate refusals and safe responses, never as a source of harmful content.

- rows: {len(rows)}
- methods: {", ".join(f"{m} ({n})" for m, n in methods.items()) or "-"}
- generator model: {run_info.get("generator_model", "-")}
- responder model: {run_info.get("responder_model", "-")}
- rounds: {run_info.get("rounds", "-")}

## Columns

| column | meaning |
|---|---|
| prompt | a harmful user request written by the generator |
| response | the responder's safe, helpful answer |
| category | the weakness (harm category) the prompt targeted; empty for Self-Instruct |
| round | the round that produced it |
| method | `data_advisor` or `self_instruct` |

## Categories (most frequent)

| category | rows |
|---|---|
{top}
"""


def export_run(
    store: RunStore,
    out_dir: str | Path,
    formats: tuple[str, ...] = FORMATS,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the requested formats into ``out_dir``; return their paths."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; choose from {FORMATS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = export_rows(store)
    data = Dataset.from_list(rows) if rows else Dataset.from_dict({c: [] for c in COLUMNS})
    paths: dict[str, Path] = {}
    if "jsonl" in formats:
        paths["jsonl"] = out / "data.jsonl"
        data.to_json(paths["jsonl"], lines=True, force_ascii=False)
    if "parquet" in formats:
        paths["parquet"] = out / "data.parquet"
        data.to_parquet(paths["parquet"])
    if "hf" in formats:
        paths["hf"] = out / "hf"
        data.save_to_disk(str(paths["hf"]))
        (paths["hf"] / "README.md").write_text(dataset_card(store.run_id, rows, run_info or {}))
    return paths
