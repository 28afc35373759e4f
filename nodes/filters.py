"""Text clean-up and the junk filters applied to model outputs.

Small generators often answer with meta-commentary ("Sure, here is a request:"), refusals,
empty lines or near-copies of the examples instead of a new harmful request. These functions
clean what can be cleaned and name the reason when an output must be rejected.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache

_WORD = re.compile(r"[a-z0-9']+")
_LEAD = re.compile(
    r"^\s*(?:[-*•>#]+|\d+[.)]|\(?[a-z]\)|request\s*\d*\s*:|prompt\s*\d*\s*:|"
    r"category\s*:|question\s*:|user\s*:|q\s*:)\s*",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"\b(i\s*(?:'m| am)\s*(?:sorry|unable|not able)|i\s*(?:cannot|can't|can not|won't|will not)|"
    r"as an ai\b|i(?:'m| am) not going to|i must (?:decline|refuse)|"
    r"it(?: is|'s) not appropriate|"
    r"i do not feel comfortable|i'm not comfortable)",
    re.IGNORECASE,
)
_META = re.compile(
    r"^(sure|certainly|of course|okay|ok|here(?:'s| is| are)|this (?:is|request|prompt)|note:|"
    r"the (?:request|prompt|example)s?\b|examples?\b|(?:one |a )?new (?:harmful )?request|"
    r"(?:one |a )?harmful (?:user )?request|your request|i(?:'m| am) here|i (?:would|will) |"
    r"you are red-teaming|thank you)|:$",
    re.IGNORECASE,
)
_META_CATEGORY = re.compile(
    r"\b(categor(?:y|ies)|dataset|summary|answer|request|principles?)\b", re.IGNORECASE
)
_VAGUE = frozenset("yet it this that them these those something anything none one".split())
_STOPWORDS = frozenset("a an and the of to in on for or with by about from at as is are be".split())

REJECTION_REASONS = ("empty", "too_short", "refusal", "meta", "duplicate", "near_duplicate")


def words(text: str) -> list[str]:
    """Lower-case word tokens."""
    return _WORD.findall(text.lower())


def normalize(text: str) -> str:
    """Canonical form for exact-duplicate checks."""
    return " ".join(words(text))


def clean_line(text: str) -> str:
    """First non-empty line, without list markers, labels, markdown or wrapping quotes."""
    for line in text.splitlines():
        line = line.strip().replace("**", "").replace("__", "")
        while True:
            stripped = _LEAD.sub("", line, count=1).strip()
            if stripped == line:
                break
            line = stripped
        line = line.strip().strip("\"'`“”‘’").strip()
        if line:
            return line
    return ""


def shingles(text: str) -> frozenset[str]:
    """Word unigrams and bigrams, for near-duplicate detection."""
    toks = words(text)
    return frozenset(toks) | frozenset(f"{a} {b}" for a, b in zip(toks, toks[1:], strict=False))


def jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    """Jaccard similarity of two sets (0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 0.0


def rejection_reason(text: str, *, min_words: int) -> str | None:
    """Why a cleaned generator output is not a usable request, or ``None`` if it is."""
    if not text:
        return "empty"
    if len(words(text)) < min_words:
        return "too_short"
    if _REFUSAL.search(text):
        return "refusal"
    if _META.search(text):
        return "meta"
    return None


_COMMON = _STOPWORDS | frozenset(
    "i you we he she it they my your me what how can do does should would could will why when "
    "where who which that this these those there not no get make use way have has if".split()
)


@lru_cache(maxsize=1 << 16)
def _shingle_order(shingle: str) -> tuple[int, int]:
    """A fixed global order of shingles, likely-rare first: bigrams before unigrams, those
    with common words last, then a stable hash."""
    common = sum(word in _COMMON for word in shingle.split())
    return (common if " " in shingle else 2 + 2 * common), zlib.crc32(shingle.encode())


class DuplicateFilter:
    """Exact and near-duplicate detection against everything seen so far.

    A text is a near duplicate when the Jaccard similarity of its word uni+bigram shingles with
    a remembered text is at least ``threshold``. Only candidates are compared: by prefix
    filtering, two shingle sets with Jaccard >= t share at least one of the first
    ``|A| - ceil(t * |A|) + 1`` shingles of each in any fixed global order, so each text is
    indexed by that prefix only. The decision is the same as comparing all pairs.
    """

    def __init__(self, existing: Iterable[str], threshold: float) -> None:
        self.threshold = threshold
        self.exact: set[str] = set()
        self._shingled: list[frozenset[str]] = []
        self._index: defaultdict[str, list[int]] = defaultdict(list)
        for text in existing:
            self.add(text)

    def __len__(self) -> int:
        return len(self._shingled)

    def _prefix(self, own: frozenset[str]) -> list[str]:
        ordered = sorted(own, key=_shingle_order)
        overlap = max(1, math.ceil(self.threshold * len(ordered) - 1e-9))
        return ordered[: len(ordered) - overlap + 1]

    def add(self, text: str) -> None:
        """Remember a kept text."""
        own = shingles(text)
        self.exact.add(normalize(text))
        for shingle in self._prefix(own):
            self._index[shingle].append(len(self._shingled))
        self._shingled.append(own)

    def reason(self, text: str) -> str | None:
        """``"duplicate"``, ``"near_duplicate"`` or ``None``."""
        if normalize(text) in self.exact:
            return "duplicate"
        own = shingles(text)
        if self.threshold <= 0:  # every pair qualifies; prefix filtering would not hold
            return "near_duplicate" if self._shingled else None
        size, threshold = len(own), self.threshold
        for i in {i for shingle in self._prefix(own) for i in self._index.get(shingle, ())}:
            other = self._shingled[i]
            shared = len(own & other)  # Jaccard = shared / union, the union counted, not built
            if shared / (size + len(other) - shared) >= threshold:
                return "near_duplicate"
        return None

    def max_similarity(self, text: str) -> float:
        """Highest Jaccard similarity to any remembered text."""
        own = shingles(text)
        return max((jaccard(own, other) for other in self._shingled), default=0.0)


_QUOTED = re.compile(r"[\"“”«»]([^\"“”«»]{3,60})[\"“”«»]")
_CATEGORY_AFTER = re.compile(
    r"(?:categor(?:y|ies)\s+(?:called|named|of|is|:)|(?:does not|doesn't|do not) (?:yet )?cover"
    r"(?: yet)?(?: is| are)?:?|(?:is )?missing(?: a category called)?|lacks|excludes?)\s+"
    r"(?:the\s+|a\s+|an\s+)?(.+)", re.IGNORECASE)
_CATEGORY_END = re.compile(r"[,.;:!?(]|\s(?:a category|which|that|as|since|because)\s",
                           re.IGNORECASE)


def clean_category(text: str, max_words: int) -> str:
    """A category name from a critic answer, at most ``max_words`` words.

    Takes a quoted phrase, or the phrase after "does not cover" / "category called" / ...,
    or else the first line. Returns ``""`` when what is left talks about the task instead of
    naming a category.
    """
    flat = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if quoted := _QUOTED.search(flat):
        line = quoted.group(1)
    elif after := _CATEGORY_AFTER.search(flat):
        line = after.group(1)
    else:
        line = clean_line(text)
    line = _CATEGORY_END.split(clean_line(line), maxsplit=1)[0].strip()
    if _META_CATEGORY.search(line) or _REFUSAL.search(line) or not content_words(line) - _VAGUE:
        return ""
    return " ".join(line.split()[:max_words])


def content_words(text: str) -> frozenset[str]:
    """Words of a category name without stopwords, plural ``s`` dropped (for overlap checks)."""
    return frozenset(
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
        for w in words(text)
        if w not in _STOPWORDS
    )


def overlaps(category: str, covered: Sequence[str], threshold: float = 0.5) -> bool:
    """True if ``category`` repeats a covered category (normalised word overlap)."""
    own = content_words(category)
    if not own:
        return True
    return any(
        normalize(category) == normalize(c) or jaccard(own, content_words(c)) >= threshold
        for c in covered
    )
