"""MinHash LSH over word-shingle sets: the approximate side of ``tools.text.DuplicateFilter``.

:class:`MinHashIndex` keeps each remembered set as a MinHash signature (``datasketch.MinHash``,
:data:`NUM_PERM` 32-bit values) and finds candidates by LSH banding: two sets are compared
when their signatures agree on every row of at least one band. The bands and rows are
datasketch's choice for the threshold (``MinHashLSH``'s optimum, a missed candidate weighted
9 times a false one, :data:`LSH_WEIGHTS`: a miss keeps a near duplicate, a false candidate
costs one comparison). A candidate is a near duplicate when its signature agrees with the
query's on at least ``threshold`` of the permutations: MinHash's estimate of the Jaccard
similarity, so decisions near the threshold can differ from the exact ones.

Storage is compact, because its purpose is memory: the signatures in ``uint32`` chunks of
:data:`CHUNK` rows, and the band hashes of all texts in one sorted ``int64`` array with the text
numbers beside it (new texts wait in a small dict until :data:`CHUNK` of them are merged in).
``datasketch.MinHashLSH``'s own storage (a Python set per bucket, each key's band hashes) held
2.7-3.2 KB a text at 9 bands, signatures aside, in a measurement on the shared Alpaca prompts:
about what the exact filter holds. ``benchmarks/bench_dedup.py`` measures this one.
"""

from __future__ import annotations

import numpy as np

NUM_PERM = 128
"""MinHash permutations (a signature is 4 bytes each)."""
LSH_WEIGHTS = (0.1, 0.9)
"""Weights of false positives and false negatives in datasketch's choice of LSH bands."""
CHUNK = 4096
"""Signature rows per chunk, and texts buffered before their band hashes are merged."""


class MinHashIndex:
    """Signatures and LSH band hashes of the remembered shingle sets (numbered from 0)."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM) -> None:
        from datasketch import MinHash, MinHashLSH

        # above ~0.95 datasketch finds no banding (b < 2); a lower band threshold only adds
        # candidates, each still checked against the threshold itself
        lsh = MinHashLSH(threshold=min(threshold, 0.95), num_perm=num_perm,
                         weights=LSH_WEIGHTS)
        self.threshold = threshold
        self.bands, self.rows = lsh.b, lsh.r
        self._hasher = MinHash(num_perm=num_perm)
        self._num_perm = num_perm
        self._chunks: list[np.ndarray] = []
        self._count = 0
        self._keys = np.empty(0, dtype=np.int64)
        """Band hashes of the merged texts, sorted."""
        self._numbers = np.empty(0, dtype=np.uint32)
        """The text each of ``_keys`` belongs to."""
        self._recent: dict[int, list[int]] = {}
        """Band hash -> texts, for the texts not merged yet."""

    def __len__(self) -> int:
        return self._count

    def signature(self, shingles: frozenset[str]) -> np.ndarray:
        """The MinHash signature (``uint32`` values) of a shingle set."""
        self._hasher.clear()
        self._hasher.update_batch([shingle.encode() for shingle in shingles])
        return np.asarray(self._hasher.hashvalues, dtype=np.uint32)

    def _band_keys(self, signature: np.ndarray) -> list[int]:
        """One hash per band (the band number is hashed with it)."""
        return [hash(bytes([band]) + signature[band * self.rows:(band + 1) * self.rows].tobytes())
                for band in range(self.bands)]

    def add(self, signature: np.ndarray) -> None:
        """Remember one signature as text number ``len(self)``."""
        number = self._count
        if number % CHUNK == 0:
            self._chunks.append(np.zeros((CHUNK, self._num_perm), dtype=np.uint32))
        self._chunks[-1][number % CHUNK] = signature
        self._count += 1
        for key in self._band_keys(signature):
            self._recent.setdefault(key, []).append(number)
        if self._count % CHUNK == 0:
            self._merge()

    def _merge(self) -> None:
        """Move the buffered band hashes into the sorted arrays (two sorted runs: a stable
        sort merges them in linear time)."""
        pairs = [(key, number) for key, numbers in self._recent.items() for number in numbers]
        keys = np.concatenate([self._keys, np.fromiter((k for k, _ in pairs), np.int64)])
        numbers = np.concatenate(
            [self._numbers, np.fromiter((n for _, n in pairs), np.uint32)])
        order = np.argsort(keys, kind="stable")
        self._keys, self._numbers = keys[order], numbers[order]
        self._recent = {}

    def candidates(self, signature: np.ndarray) -> set[int]:
        """The remembered texts sharing a band with ``signature``."""
        keys = self._band_keys(signature)
        found: set[int] = set()
        for key in keys:
            found.update(self._recent.get(key, ()))
        wanted = np.array(keys, dtype=np.int64)
        starts = np.searchsorted(self._keys, wanted, "left")
        ends = np.searchsorted(self._keys, wanted, "right")
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            found.update(self._numbers[start:end].tolist())
        return found

    def similarity(self, signature: np.ndarray, number: int) -> float:
        """Estimated Jaccard similarity of ``signature`` and remembered text ``number``."""
        return float((self._chunks[number // CHUNK][number % CHUNK] == signature).mean())

    def max_similarity(self, signature: np.ndarray) -> float:
        """Highest estimated Jaccard similarity to any remembered text (0 with none)."""
        best = 0.0
        for i, chunk in enumerate(self._chunks):
            held = min(CHUNK, self._count - i * CHUNK)
            best = max(best, float((chunk[:held] == signature).mean(axis=1).max()))
        return best

    def __repr__(self) -> str:
        return f"MinHashIndex({self._count} texts, {self.bands} bands x {self.rows} rows)"
