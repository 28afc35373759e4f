"""Text primitives shared by generation, evaluation and the training mix.

One definition of each, so that the generator's duplicate filter, the diversity measurements
(`evaluation.diversity`) and the training mix's deduplication (`training.mix`) agree on what a
word, a duplicate and an n-gram are:

- :func:`words`: word tokens (Unicode letters and digits, apostrophes kept, case folded);
- :func:`normalize`: the canonical form two texts are exact duplicates under;
- :func:`shingles` and :func:`jaccard`: word uni+bigram sets and their similarity;
- :class:`DuplicateFilter`: exact and near-duplicate detection against everything seen so far
  (exact Jaccard up to a size, MinHash LSH above it);
- :func:`ngrams` and :func:`ngram_counts`: word n-grams, never across text boundaries.

What is about cleaning and judging model outputs (list markers, refusals, category names) stays
with the nodes, in ``nodes/filters.py``.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import chain
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tools.minhash import MinHashIndex

_WORD = re.compile(r"(?:[^\W_]|')+")
"""Runs of Unicode letters, digits and apostrophes: on ASCII text exactly ``[a-z0-9']+`` after
lower-casing; ``_`` and all punctuation separate words."""

STOPWORDS = frozenset("a an and the of to in on for or with by about from at as is are be".split())
"""Function words that say nothing about a text's topic."""


def words(text: str) -> list[str]:
    """Word tokens: NFKC-normalised, case-folded runs of letters, digits and apostrophes.

    Letters of any script count (``"naïve"`` is one word, a Cyrillic prompt is not empty), so
    two prompts in another script are never equal for lack of ASCII letters. NFKC makes the
    composed and decomposed spellings of a letter one; ``casefold`` is ``lower`` on ASCII.
    """
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


@lru_cache(maxsize=1 << 15)
def normalize(text: str) -> str:
    """Canonical form for exact-duplicate checks: the :func:`words`, space-separated (case,
    punctuation and whitespace ignored).

    The one rule for every deduplication: the generator's duplicate filter, the diversity
    measurements and the training mix (which keyed on case-folded, whitespace-collapsed text
    before, so that "How do I pick a lock?" and "how do I pick a lock" were two examples there
    and one request here). Cached: the critic compares each answer with every earlier weakness.
    """
    return " ".join(words(text))


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


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of one token sequence, in order (none when it is shorter than ``n``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def ngram_counts(texts: Iterable[str], n: int) -> tuple[int, int]:
    """(distinct, total) word n-grams over the texts; no n-gram crosses two texts."""
    if n < 1:  # checked before the loop: an empty ``texts`` must refuse it too
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = ngrams(words(text), n)
        total += len(grams)
        seen.update(grams)
    return len(seen), total


_COMMON = STOPWORDS | frozenset(
    "i you we he she it they my your me what how can do does should would could will why when "
    "where who which that this these those there not no get make use way have has if".split()
)


@lru_cache(maxsize=1 << 16)
def _shingle_order(shingle: str) -> tuple[int, int]:
    """A fixed global order of shingles, likely-rare first: bigrams before unigrams, those
    with common words last, then a stable hash."""
    common = sum(word in _COMMON for word in shingle.split())
    return (common if " " in shingle else 2 + 2 * common), zlib.crc32(shingle.encode())


EXACT_UP_TO = 20_000
"""Texts a :class:`DuplicateFilter` remembers exactly; above, it switches to MinHash LSH."""


class DuplicateFilter:
    """Exact and near-duplicate detection against everything seen so far.

    A text is a near duplicate when the Jaccard similarity of its word uni+bigram shingles with
    a remembered text is at least ``threshold``.

    Up to ``exact_up_to`` remembered texts (default :data:`EXACT_UP_TO`) the decision is exact;
    beyond, the filter moves everything it holds to a ``tools.minhash.MinHashIndex`` (MinHash
    LSH, ``datasketch``) and from then on is
    **approximate** (:attr:`approximate`): the same shingles and threshold, but the Jaccard
    similarity is MinHash's estimate and only texts sharing an LSH band are compared, so a few
    near duplicates pass and a few texts just below the threshold are rejected (agreement with
    the exact filter: ``benchmarks/bench_dedup.py``, with the memory each holds a text).
    Exact duplicates (same :func:`normalize`) are always caught exactly.

    The exact filter compares only candidates: by prefix
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

    def __init__(
        self, existing: Iterable[str], threshold: float, *, exact_up_to: int = EXACT_UP_TO
    ) -> None:
        self.threshold = threshold
        self.exact_up_to = exact_up_to
        self._minhash: MinHashIndex | None = None
        """Set once more than ``exact_up_to`` texts are remembered (then ``_shingled`` is
        emptied)."""
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
        return len(self._minhash) if self._minhash is not None else len(self._shingled)

    @property
    def approximate(self) -> bool:
        """True once the filter holds more than ``exact_up_to`` texts (MinHash LSH)."""
        return self._minhash is not None

    def _order(self, shingle: str) -> tuple[int, int, int]:
        return self._rank.get(shingle, 0), *_shingle_order(shingle)

    def _prefix(self, own: frozenset[str]) -> list[str]:
        ordered = sorted(own, key=self._order)
        overlap = max(1, math.ceil(self.threshold * len(ordered) - 1e-9))
        return ordered[: len(ordered) - overlap + 1]

    def add(self, text: str) -> None:
        """Remember a kept text."""
        self.exact.add(normalize(text))
        if self._minhash is not None:
            self._minhash.add(self._minhash.signature(shingles(text)))
            return
        self._shingled.append(shingles(text))
        if len(self._shingled) > self.exact_up_to and self.threshold > 0:
            self._switch_to_minhash()

    def _switch_to_minhash(self) -> None:
        """Move the remembered shingle sets into a ``tools.minhash.MinHashIndex`` and drop
        them (imported here: numpy and datasketch only for filters that grow that large)."""
        from tools.minhash import MinHashIndex

        self._minhash = MinHashIndex(self.threshold)
        for own in self._shingled:
            self._minhash.add(self._minhash.signature(own))
        self._shingled, self._rank = [], Counter()
        self._index.clear()
        self._indexed = 0

    def _approximate_reason(self, own: frozenset[str], minhash: MinHashIndex) -> str | None:
        """``"near_duplicate"`` when a text sharing an LSH band has an estimated Jaccard
        similarity of at least the threshold (an empty shingle set is nobody's duplicate)."""
        if not own:
            return None
        signature = minhash.signature(own)
        candidates = minhash.candidates(signature)
        self.compared += len(candidates)
        self.checks += 1
        if any(minhash.similarity(signature, i) >= self.threshold for i in candidates):
            return "near_duplicate"
        return None

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
            return "near_duplicate" if len(self) else None
        if self._minhash is not None:
            return self._approximate_reason(own, self._minhash)
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
        is as similar to a remembered one as the best so far: it can no longer win.
        Approximate filters use MinHash's estimates."""
        if self._minhash is not None:
            return min(range(len(texts)), key=lambda i: self.max_similarity(texts[i]))
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
        """Highest Jaccard similarity to any remembered text (estimated once approximate)."""
        if self._minhash is not None:
            return self._minhash.max_similarity(self._minhash.signature(shingles(text)))
        own, best = shingles(text), 0.0
        size = len(own)
        for other in self._shingled:  # every text: the pool's max, not a yes/no; kept lean
            shared = len(own & other)
            if shared and shared / (size + len(other) - shared) > best:
                best = shared / (size + len(other) - shared)
        return best
