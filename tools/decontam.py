"""Decontamination: keep evaluation questions out of generated and training data.

A text is *contaminated* by a set of evaluation prompts when

- it equals one of them after :func:`tools.text.normalize` (case, punctuation and whitespace
  ignored), or
- its word n-gram containment in them is above ``threshold``: the share of the text's word
  n-grams (:func:`tools.text.ngrams` over :func:`tools.text.words`) found among the n-grams
  of the evaluation prompts.

Defaults: ``n`` = :data:`DEFAULT_NGRAM` (8) and ``threshold`` = :data:`DEFAULT_THRESHOLD`
(0.0: a single shared 8-gram is contamination, the strictest reading of "training data must
never contain the test questions"; raise it, e.g. to 0.5, to let a long text share a phrase).
A text shorter than ``n`` words has no n-gram, so it can only be caught by the exact match.

:class:`ContaminationIndex` takes plain strings; :func:`read_prompts` reads the evaluation
files (any format of :func:`tools.rows.read_file_rows`: CatQA's JSON, BeaverTails' CSV, MMLU's
JSONL, a text file of one prompt a line ...), and :func:`file_digests` gives the content hashes
that a run records, so that a resume against changed files is refused. The generator
(``nodes.generator``) rejects contaminated prompts with the reason ``contaminated``; the training
mix (``training.mix.build_mix``) drops contaminated examples and counts them per source.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from tools.rows import PROMPT_FIELDS, read_file_rows
from tools.text import ngrams, normalize, words

DEFAULT_NGRAM = 8
"""n of the word n-grams compared."""
DEFAULT_THRESHOLD = 0.0
"""Containment above which a text is contaminated (0.0: any shared n-gram)."""
TEXT_FIELDS = (*PROMPT_FIELDS, "input")
"""Columns an evaluation prompt is read from, the first present in a row (``input``: MMLU)."""


class DecontaminationError(ValueError):
    """An evaluation file cannot be read for decontamination; the message says what to do."""


class ContaminationIndex:
    """The normalised evaluation prompts and the set of their word n-grams."""

    def __init__(
        self, texts: Iterable[str], *, n: int = DEFAULT_NGRAM,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be within [0, 1), got {threshold}")
        self.n, self.threshold = n, threshold
        self.exact: set[str] = set()
        self._grams: set[tuple[str, ...]] = set()
        for text in texts:
            tokens = words(text)
            if tokens:
                self.exact.add(" ".join(tokens))  # normalize(text), without tokenising twice
                self._grams.update(ngrams(tokens, n))

    def __len__(self) -> int:
        """Distinct evaluation prompts held."""
        return len(self.exact)

    def containment(self, text: str) -> float:
        """Share of ``text``'s word n-grams found in the index (0 for a text shorter than n)."""
        grams = ngrams(words(text), self.n)
        if not grams:
            return 0.0
        return sum(gram in self._grams for gram in grams) / len(grams)

    def contaminated(self, text: str) -> bool:
        """True when ``text`` equals an evaluation prompt after normalisation or its n-gram
        containment is above the threshold."""
        return normalize(text) in self.exact or self.containment(text) > self.threshold


def _prompt_of(row: dict[str, Any]) -> str:
    """The row's prompt: the first string in :data:`TEXT_FIELDS` ("" when none)."""
    for name in TEXT_FIELDS:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return ""


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of one evaluation file; a :class:`DecontaminationError` naming the file and
    what to give instead when it is missing, unreadable or holds no prompt column."""
    file = Path(path)
    if not file.is_file():
        raise DecontaminationError(
            f"decontamination file {file} does not exist; give an evaluation set file "
            "(.json, .jsonl, .csv, .parquet or .txt)")
    try:
        rows = read_file_rows(file)
    except (ValueError, UnicodeDecodeError, OSError) as exc:  # JSONDecodeError is a ValueError
        raise DecontaminationError(f"decontamination file {file} cannot be read ({exc}); give "
                                   "an evaluation set file (.json, .jsonl, .csv, .parquet, "
                                   ".txt)") from None
    prompts = [text for row in rows if (text := _prompt_of(row))]
    if not prompts:
        raise DecontaminationError(
            f"decontamination file {file} has no prompt in a column named "
            f"{', '.join(TEXT_FIELDS)}; give an evaluation set file with one")
    return prompts


def file_digests(paths: Sequence[str]) -> dict[str, str]:
    """``{path: sha256 of its bytes}``: what a run records of its decontamination files."""
    digests = {}
    for path in paths:
        try:
            digests[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as exc:
            raise DecontaminationError(
                f"decontamination file {path} cannot be read ({exc.strerror}); give an "
                "existing evaluation set file") from None
    return digests


def index_of_files(
    paths: Sequence[str], *, n: int = DEFAULT_NGRAM, threshold: float = DEFAULT_THRESHOLD,
) -> ContaminationIndex | None:
    """The index of the prompts of ``paths`` (None when there is none), built once a process
    for the same file contents, n and threshold."""
    if not paths:
        return None
    key = json.dumps(sorted(file_digests(paths).items()))
    return _cached_index(tuple(paths), key, n, threshold)


@lru_cache(maxsize=4)
def _cached_index(paths: tuple[str, ...], digests: str, n: int,
                  threshold: float) -> ContaminationIndex:
    """``digests`` keys the cache on the files' contents: a file changed is read again."""
    return ContaminationIndex(
        (text for path in paths for text in read_prompts(path)), n=n, threshold=threshold)
