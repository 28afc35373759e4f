"""Text clean-up and the junk filters applied to model outputs.

Small generators often answer with meta-commentary ("Sure, here is a request:"), refusals,
empty lines or near-copies of the examples instead of a new harmful request. These functions
clean what can be cleaned and name the reason when an output must be rejected.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import chain

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


@lru_cache(maxsize=1 << 15)
def normalize(text: str) -> str:
    """Canonical form for exact-duplicate checks (cached: the critic compares each answer with
    every earlier weakness)."""
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


@lru_cache(maxsize=1 << 15)
def shingles(text: str) -> frozenset[str]:
    """Word unigrams and bigrams, for near-duplicate detection (cached: the generator checks
    its prompts against the pool every round)."""
    toks = words(text)
    return frozenset(toks) | frozenset(f"{a} {b}" for a, b in zip(toks, toks[1:], strict=False))


def jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    """Jaccard similarity of two sets (0 for two empty sets)."""
    shared = len(a & b)  # the union counted, not built
    return shared / (len(a) + len(b) - shared) if a or b else 0.0


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

    The order puts the rarest shingles first (fewest remembered texts holding them, as counted
    when the index was last built; ties and unseen shingles by :func:`_shingle_order`), so a
    prefix finds only the few texts that share a rare shingle: with a fixed order, the
    candidates per check grew with the data (134 -> 1,539 a prompt over 300 rounds at K = 32).
    The index is rebuilt with fresh counts each time the number of texts doubles (amortised
    O(1) a text); between rebuilds the order stays fixed, which is what keeps the decision
    exact. ``compared`` counts the candidate pairs compared so far, ``checks`` the checks.
    """

    REINDEX_FROM = 64
    """Texts before the first rebuild with counted frequencies."""

    def __init__(self, existing: Iterable[str], threshold: float) -> None:
        self.threshold = threshold
        self.exact: set[str] = set()
        self._shingled: list[frozenset[str]] = []
        self._index: defaultdict[str, list[int]] = defaultdict(list)
        self._indexed = 0
        """Texts ``_index`` holds; the rest are indexed when the next check needs them."""
        self._rank: Counter[str] = Counter()
        """Frequencies frozen at the last rebuild: the global order between rebuilds."""
        self._ranked_at = 0
        self.compared = self.checks = 0
        for text in existing:
            self.add(text)

    def __len__(self) -> int:
        return len(self._shingled)

    def _order(self, shingle: str) -> tuple[int, int, int]:
        return self._rank.get(shingle, 0), *_shingle_order(shingle)

    def _prefix(self, own: frozenset[str]) -> list[str]:
        ordered = sorted(own, key=self._order)
        overlap = max(1, math.ceil(self.threshold * len(ordered) - 1e-9))
        return ordered[: len(ordered) - overlap + 1]

    def add(self, text: str) -> None:
        """Remember a kept text."""
        self.exact.add(normalize(text))
        self._shingled.append(shingles(text))

    def _update_index(self) -> None:
        """Index the texts added since the last check; rebuild the order when they doubled."""
        if len(self._shingled) >= max(self.REINDEX_FROM, 2 * self._ranked_at):
            self._rank = Counter(chain.from_iterable(self._shingled))
            self._ranked_at = len(self._shingled)
            self._index.clear()
            self._indexed = 0
        for i in range(self._indexed, len(self._shingled)):
            for shingle in self._prefix(self._shingled[i]):
                self._index[shingle].append(i)
        self._indexed = len(self._shingled)

    def reason(self, text: str) -> str | None:
        """``"duplicate"``, ``"near_duplicate"`` or ``None``."""
        if normalize(text) in self.exact:
            return "duplicate"
        own = shingles(text)
        if self.threshold <= 0:  # every pair qualifies; prefix filtering would not hold
            return "near_duplicate" if self._shingled else None
        self._update_index()
        size, threshold = len(own), self.threshold
        candidates = {i for shingle in self._prefix(own) for i in self._index.get(shingle, ())}
        self.compared += len(candidates)
        self.checks += 1
        for i in candidates:
            other = self._shingled[i]
            shared = len(own & other)  # Jaccard = shared / union, the union counted, not built
            if shared / (size + len(other) - shared) >= threshold:
                return "near_duplicate"
        return None

    def least_similar(self, texts: Sequence[str]) -> int:
        """Index of the text with the lowest :meth:`max_similarity` (the first of equals), as
        ``min(range(len(texts)), key=...)`` finds it, but a text stops being compared once it
        is as similar to a remembered one as the best so far: it can no longer win."""
        best, best_score = 0, math.inf
        for index, text in enumerate(texts):
            own, score = shingles(text), 0.0
            size = len(own)
            for other in reversed(self._shingled):  # recent texts first: likely the closest
                shared = len(own & other)
                if shared and shared / (size + len(other) - shared) > score:
                    score = shared / (size + len(other) - shared)
                    if score >= best_score:
                        break
            if score < best_score:
                best, best_score = index, score
        return best

    def max_similarity(self, text: str) -> float:
        """Highest Jaccard similarity to any remembered text."""
        own, best = shingles(text), 0.0
        size = len(own)
        for other in self._shingled:  # every text: the pool's max, not a yes/no; kept lean
            shared = len(own & other)
            if shared and shared / (size + len(other) - shared) > best:
                best = shared / (size + len(other) - shared)
        return best


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


@lru_cache(maxsize=1 << 14)
def content_words(text: str) -> frozenset[str]:
    """Words of a category name without stopwords, plural ``s`` dropped (for overlap checks).

    Cached: the critic checks each answer against every earlier weakness of the run."""
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
