"""Default seeds: a few harmful seed prompts and seed categories, written for this project.

They start the in-context pool and the summary. Replace them with one-item-per-line files
(``--seed-prompts``, ``--seed-categories``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tools.files import read_text


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_seeds(kind: str, path: str | None = None) -> list[str]:
    """Seed ``prompts`` or ``categories`` from ``path``, or the shipped defaults."""
    if path:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"seed {kind} file {file} does not exist")
        items = _lines(read_text(file))  # not UTF-8: a TextFileError naming byte and line
        if not items:
            raise ValueError(f"seed {kind} file {file} is empty")
        return items
    return _lines(resources.files("graph").joinpath("seeds", f"seed_{kind}.txt").read_text("utf-8"))
