"""The training mix: generated safety data plus general instruction data, split for validation.

As in the Data Advisor paper (arXiv 2410.05269), a target model is fine-tuned on the generated
safety data mixed with instruction-following data (there: 10K safety + 9K Alpaca-style
examples), so that it learns to answer harmful requests safely without forgetting how to help.

- :func:`load_safety` reads generated data: a run folder or its ``run.sqlite`` (table
  ``samples``, rows with a non-empty response), an export folder (``data.jsonl``), a JSONL /
  JSON / Parquet file, a saved HF dataset folder, or an HF id ``hf:<id>[:<split>]``.
- :func:`load_instructions` reads instruction data: Alpaca rows ``{instruction, input, output}``
  or ``{prompt, response}`` rows, from the same kinds of sources.
- :func:`build_mix` drops the examples whose prompt overlaps the evaluation sets when given
  their index (`tools.decontam`: the generator's ``contaminated`` rule; training data must
  never contain the test questions), deduplicates on the normalised prompt
  (`tools.text.normalize`, the rule the generator's duplicate filter uses), mixes at a given
  safety share, shuffles with a seed and holds out a validation slice.

Every example is a plain ``{"prompt", "response", "source"}`` dict (``source`` is ``"safety"``
or ``"instruction"``).
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.decontam import ContaminationIndex
from tools.store import run_id_of_store
from tools.text import normalize

Example = dict[str, str]
SAFETY = "safety"
INSTRUCTION = "instruction"


@dataclass(frozen=True)
class MixSplits:
    """The shuffled training mix and its held-out validation slice."""

    train: list[Example]
    validation: list[Example]
    contaminated: dict[str, int] = field(default_factory=dict)
    """Examples dropped per source because their prompt overlaps the evaluation sets."""

    def counts(self) -> dict[str, dict[str, int]]:
        """Examples per source in each split, and those dropped as contaminated, e.g.
        ``{"train": {"safety": 9, ...}, "validation": {...}, "contaminated": {"instruction":
        2}}``."""
        return {
            "train": dict(Counter(e["source"] for e in self.train)),
            "validation": dict(Counter(e["source"] for e in self.validation)),
            "contaminated": dict(self.contaminated),
        }


# --- reading rows ------------------------------------------------------------------------------


def _hf_rows(spec: str) -> list[dict[str, Any]]:
    from datasets import load_dataset

    name, _, split = spec.removeprefix("hf:").partition(":")
    if not name:
        raise ValueError(f"{spec!r}: expected hf:<dataset id>[:<split>]")
    return [dict(r) for r in load_dataset(name, split=split or "train")]


def _disk_rows(path: Path) -> list[dict[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        if "train" not in data:
            raise ValueError(f"{path}: dataset folder has no 'train' split ({list(data)})")
        data = data["train"]
    return [dict(r) for r in data]


def _sqlite_rows(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        columns = {r[1] for r in conn.execute("pragma table_info(samples)")}
        if not {"prompt", "response"} <= columns:
            raise ValueError(f"{path}: no table 'samples' with columns prompt, response")
        order = "run_id, round, slot" if {"run_id", "round", "slot"} <= columns else "rowid"
        run_id = run_id_of_store(path)  # a run folder's run: the id in its run.json (else all)
        where, params = ("and run_id = ? ", [run_id]) if run_id else ("", [])
        rows = conn.execute(
            "select prompt, response from samples where response is not null "
            f"and trim(response) != '' {where}order by {order}",
            params,
        ).fetchall()
    finally:
        conn.close()
    return [{"prompt": p, "response": r} for p, r in rows]


def _file_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [json.loads(x) for x in path.read_text("utf-8").split("\n") if x.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text("utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of objects")
        return data
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    if suffix in (".sqlite", ".db"):
        return _sqlite_rows(path)
    raise ValueError(f"{path}: unknown data file type {suffix!r} (use .jsonl, .json, .parquet)")


def read_rows(source: str | Path) -> list[dict[str, Any]]:
    """Raw rows of any supported source (see the module docstring)."""
    if str(source).startswith("hf:"):
        return _hf_rows(str(source))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"training data {path} does not exist")
    if path.is_dir():
        for name in ("run.sqlite", "data.jsonl"):
            if (path / name).exists():
                return _file_rows(path / name)
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _disk_rows(path)
        if (path / "hf").is_dir():
            return _disk_rows(path / "hf")
        raise ValueError(
            f"{path}: not a run folder (run.sqlite), an export folder (data.jsonl) "
            "or a saved HF dataset folder"
        )
    return _file_rows(path)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def to_example(row: Mapping[str, Any], source: str) -> Example | None:
    """A row as an example, or None where its prompt or response is empty.

    Alpaca rows become ``instruction`` (+ a blank line + ``input`` when it is non-empty);
    ``{prompt, response}`` rows are taken as they are.
    """
    if "instruction" in row:
        prompt = _text(row["instruction"]).strip()
        extra = _text(row.get("input")).strip()
        if prompt and extra:
            prompt = f"{prompt}\n\n{extra}"
        response = _text(row.get("output", row.get("response"))).strip()
    elif "prompt" in row:
        prompt = _text(row["prompt"]).strip()
        response = _text(row.get("response", row.get("output"))).strip()
    else:
        raise ValueError(
            f"row has neither 'instruction' nor 'prompt' (fields: {sorted(row)})"
        )
    if not prompt or not response:
        return None
    return {"prompt": prompt, "response": response, "source": source}


def _load(source: str | Path, kind: str) -> list[Example]:
    rows = read_rows(source)
    examples = [e for r in rows if (e := to_example(r, kind)) is not None]
    if not examples:
        raise ValueError(
            f"{source}: no {kind} examples with a non-empty prompt and response "
            f"({len(rows)} rows read)"
        )
    return examples


def load_safety(source: str | Path) -> list[Example]:
    """Generated safety data (prompt + safe response) from a run, an export or a data file."""
    return _load(source, SAFETY)


def load_instructions(source: str | Path) -> list[Example]:
    """Instruction data: Alpaca JSON/JSONL, ``{prompt, response}`` rows, or ``hf:<id>``."""
    return _load(source, INSTRUCTION)


# --- mixing ------------------------------------------------------------------------------------


def dedupe(examples: Iterable[Example], seen: set[str] | None = None) -> list[Example]:
    """Examples whose normalised prompt was not seen before (first one wins); updates ``seen``.

    Prompts are keyed by `tools.text.normalize`, the generator's exact-duplicate rule (case,
    punctuation and whitespace ignored), so a prompt the generator would reject as a duplicate
    is one example here too: "How do I pick a lock?" and "how do I pick a lock" are one.
    """
    seen = set() if seen is None else seen
    out = []
    for e in examples:
        key = normalize(e["prompt"])
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def drop_contaminated(
    examples: Sequence[Example], index: ContaminationIndex | None
) -> tuple[list[Example], int]:
    """The examples whose prompt is not contaminated by ``index``'s evaluation prompts
    (`tools.decontam`), and how many were dropped (all kept when ``index`` is None)."""
    if index is None:
        return list(examples), 0
    kept = [e for e in examples if not index.contaminated(e["prompt"])]
    return kept, len(examples) - len(kept)


def _counts(n_safety: int, n_instr: int, ratio: float | None) -> tuple[int, int]:
    """How many safety and instruction examples to take for the wanted safety share."""
    if ratio is None:  # the paper's setting: all safety data, about as many instructions
        return n_safety, min(n_instr, n_safety)
    if ratio == 1.0:
        return n_safety, 0
    if ratio == 0.0:
        return 0, n_instr
    total = min(n_safety / ratio, n_instr / (1.0 - ratio))  # largest mix availability allows
    return min(n_safety, round(total * ratio)), min(n_instr, round(total * (1.0 - ratio)))


def build_mix(
    safety: Sequence[Example],
    instructions: Sequence[Example],
    *,
    ratio: float | None = None,
    seed: int = 0,
    val_fraction: float = 0.05,
    contamination: ContaminationIndex | None = None,
) -> MixSplits:
    """Mix safety and instruction examples and hold out a validation slice.

    With ``contamination`` (the index of the evaluation sets, `tools.decontam`), examples
    whose prompt equals or shares word n-grams with an evaluation prompt are dropped first,
    from both sources, and counted per source (``MixSplits.contaminated``).

    ``ratio`` is the safety share of the mix (0..1). The default ``None`` uses all safety
    examples and as many instruction examples (capped by availability), as in the paper. With a
    ratio, the mix is the largest one the available data allows at that share. Prompts are
    deduplicated on `tools.text.normalize` (a safety example wins over an instruction with
    the same prompt), sampled and shuffled with ``seed``; ``val_fraction`` of the mix (at
    least one example when it is > 0) becomes the validation split.
    """
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio (the safety share) must be within [0, 1], got {ratio}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be within [0, 1), got {val_fraction}")
    safety, dropped_safety = drop_contaminated(safety, contamination)
    instructions, dropped_instructions = drop_contaminated(instructions, contamination)
    contaminated = {source: n for source, n in ((SAFETY, dropped_safety),
                                                (INSTRUCTION, dropped_instructions)) if n}
    seen: set[str] = set()
    safety = dedupe(safety, seen)
    instructions = dedupe(instructions, seen)
    if not safety and ratio != 0.0:
        raise ValueError("no safety examples to mix (the safety data is empty)")
    if not instructions and ratio != 1.0:
        raise ValueError(
            "no instruction examples to mix (the instruction data is empty or all its prompts "
            "duplicate safety prompts); use ratio=1.0 for safety data only"
        )
    n_safety, n_instr = _counts(len(safety), len(instructions), ratio)
    rng = random.Random(seed)
    mix = rng.sample(list(safety), n_safety) + rng.sample(list(instructions), n_instr)
    rng.shuffle(mix)
    if not mix:
        raise ValueError("the mix is empty")
    n_val = round(len(mix) * val_fraction)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if n_val >= len(mix):
        raise ValueError(
            f"the mix has {len(mix)} examples: too few for a validation split of "
            f"{val_fraction:.0%} with training examples left"
        )
    return MixSplits(train=mix[n_val:], validation=mix[:n_val], contaminated=contaminated)
