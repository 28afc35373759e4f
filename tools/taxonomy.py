"""A fixed harm taxonomy and a data set's coverage of it: counts, categories covered, entropy.

The taxonomy is data: a text file of one category a line, ``CODE: Name`` or just ``Name`` (then
the name is its code too); blank lines and lines starting with ``#`` are skipped. The default is
Llama Guard 3's S1-S14 hazard names (``tools/taxonomies/llamaguard3.txt``); ``--taxonomy FILE``
replaces it. A label (a judge's answer, a data set's category cell) is placed in the taxonomy
by code or by name (case, punctuation and spacing ignored): :meth:`Taxonomy.name_of`.

:func:`coverage` is the one measure of coverage the app has (the run's ``status``, ``history``,
the export's card, ``eval diversity`` and the report show it): prompts per category (every
category, zeros included), categories covered, and the normalised entropy of the counts
(Shannon entropy over the taxonomy's categories divided by ``log`` of their number: 1.0 when
every category has as many prompts, 0.0 when all are in one or there are none).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from tools.files import read_text
from tools.text import normalize

DEFAULT_TAXONOMY = "llamaguard3"
"""The name of the shipped taxonomy used when no file is given."""


@dataclass(frozen=True)
class Taxonomy:
    """Category codes and names, in the file's order."""

    name: str
    codes: tuple[str, ...]
    names: tuple[str, ...]

    def name_of(self, label: str | None) -> str | None:
        """The category ``label`` names (by code or by name), or ``None``."""
        key = normalize(label or "")
        if not key:
            return None
        for code, name in zip(self.codes, self.names, strict=True):
            if key in (normalize(code), normalize(name)):
                return name
        return None

    def lines(self) -> list[str]:
        """``CODE: Name`` per category (just the name where the code is the name)."""
        return [name if code == name else f"{code}: {name}"
                for code, name in zip(self.codes, self.names, strict=True)]

    @property
    def sha256(self) -> str:
        """SHA-256 of the categories (:meth:`lines`, in order; comments and blank lines of the
        file do not count): what a run records to refuse a resume on another taxonomy."""
        return hashlib.sha256("\n".join(self.lines()).encode()).hexdigest()


class TaxonomyError(ValueError):
    """A taxonomy file that cannot be read or names no category."""


def parse_taxonomy(text: str, name: str) -> Taxonomy:
    """A taxonomy from its text (see the module docstring); ``name`` names it in errors."""
    codes: list[str] = []
    names: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        code, sep, rest = line.partition(":")
        code, label = (code.strip(), rest.strip()) if sep and rest.strip() else (line, line)
        if normalize(label) in {normalize(n) for n in names}:
            raise TaxonomyError(f"{name}: category {label!r} is listed twice; list it once")
        codes.append(code)
        names.append(label)
    if not names:
        raise TaxonomyError(f"{name}: no categories; write one category a line")
    return Taxonomy(name, tuple(codes), tuple(names))


def load_taxonomy(path: str | None = None) -> Taxonomy:
    """The taxonomy in ``path``, or the shipped default (Llama Guard 3's S1-S14); read once per
    path, size and modification time (a file edited meanwhile is read again)."""
    if not path:
        return _shipped_taxonomy()
    try:
        stat = Path(path).stat()
        return _read_taxonomy(path, stat.st_size, stat.st_mtime_ns)
    except OSError as exc:
        raise TaxonomyError(
            f"taxonomy {path}: cannot read it ({exc.strerror or exc}); give a text file of one "
            "category a line"
        ) from None


@lru_cache(maxsize=1)
def _shipped_taxonomy() -> Taxonomy:
    """Llama Guard 3's S1-S14, shipped in ``tools/taxonomies/``."""
    shipped = resources.files("tools").joinpath("taxonomies", f"{DEFAULT_TAXONOMY}.txt")
    return parse_taxonomy(shipped.read_text("utf-8"), DEFAULT_TAXONOMY)


@lru_cache(maxsize=8)
def _read_taxonomy(path: str, size: int, mtime_ns: int) -> Taxonomy:
    """:func:`load_taxonomy` of a file, cached by what identifies its content."""
    return parse_taxonomy(read_text(Path(path)), Path(path).stem)


def normalised_entropy(counts: Iterable[int], categories: int) -> float:
    """Shannon entropy of ``counts`` divided by ``log(categories)`` (0.0 without prompts or
    with one category)."""
    values = [c for c in counts if c > 0]
    total = sum(values)
    if total == 0 or categories < 2:
        return 0.0
    entropy = -sum(c / total * math.log(c / total) for c in values)
    return entropy / math.log(categories)


def coverage(labels: Iterable[str | None], taxonomy: Taxonomy) -> dict[str, Any]:
    """Coverage of ``taxonomy`` by the labels of a data set's prompts (``None``: unlabelled).

    ``{"taxonomy", "counts" (every category, in the taxonomy's order), "covered", "categories",
    "labelled", "unlabelled", "entropy"}``; a label outside the taxonomy counts as unlabelled.
    """
    found: Counter[str] = Counter()
    unlabelled = 0
    for label in labels:
        name = taxonomy.name_of(label)
        if name is None:
            unlabelled += 1
        else:
            found[name] += 1
    counts = {name: found[name] for name in taxonomy.names}
    return {
        "taxonomy": taxonomy.name,
        "counts": counts,
        "covered": sum(1 for c in counts.values() if c),
        "categories": len(counts),
        "labelled": sum(counts.values()),
        "unlabelled": unlabelled,
        "entropy": round(normalised_entropy(counts.values(), len(counts)), 4),
    }


def coverage_line(cov: dict[str, Any]) -> str:
    """One line: ``9/14 categories of llamaguard3 covered, entropy 0.71 (120 labelled)``."""
    return (f"{cov['covered']}/{cov['categories']} categories of {cov['taxonomy']} covered, "
            f"normalised entropy {cov['entropy']:.2f} ({cov['labelled']} prompts labelled)")
