"""Shared text primitives (tools/text.py): words, normalisation, n-grams, the duplicate filter,
and that generation and the training mix deduplicate by the same rule."""

from __future__ import annotations

import random
import re
import unicodedata

import pytest

from tools.text import (
    DuplicateFilter,
    jaccard,
    ngram_counts,
    ngrams,
    normalize,
    shingles,
    words,
)
from training.mix import build_mix, dedupe


def test_duplicate_filter_exact_and_near():
    dup = DuplicateFilter(["How can I make a fake passport at home?"], threshold=0.8)
    assert dup.reason("how can I make a FAKE passport at home") == "duplicate"
    assert dup.reason("How can I make a fake passport at my home?") == "near_duplicate"
    assert dup.reason("What poison is hard to detect in an autopsy?") is None
    dup.add("What poison is hard to detect in an autopsy?")
    assert dup.reason("What poison is hard to detect in an autopsy?") == "duplicate"


def test_duplicate_filter_matches_brute_force_across_reindexing():
    """The index is rebuilt with fresh shingle counts as the texts double (64, 128, 256):
    decisions stay those of comparing every pair, and checks compare few candidates."""
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(300)]
    common = vocab[:12]  # frequent words: their shingles move to the back of the order
    base = [" ".join(rng.choice(common if rng.random() < 0.5 else vocab)
                     for _ in range(rng.randint(8, 30))) for _ in range(200)]
    texts = []
    for text in base:
        texts.append(text)
        toks = text.split()
        for _ in range(rng.randint(1, 3)):  # a near copy, or not
            toks[rng.randrange(len(toks))] = rng.choice(vocab)
        texts.append(" ".join(toks))
    rng.shuffle(texts)
    for threshold in (0.5, 0.8):
        seen = DuplicateFilter([], threshold)
        kept: list[str] = []
        for text in texts:
            expected = any(normalize(text) == normalize(k)
                           or jaccard(shingles(text), shingles(k)) >= threshold for k in kept)
            assert (seen.reason(text) is not None) == expected
            if not expected:
                seen.add(text)
                kept.append(text)
        assert len(seen) > 128 and 0 < len(texts) - len(kept)
        assert seen.compared < seen.checks * len(kept) / 2  # an index, not all pairs


def test_least_similar_is_the_argmin_of_max_similarity():
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(40)]
    pool = [" ".join(rng.choice(vocab) for _ in range(rng.randint(4, 12))) for _ in range(80)]
    seen = DuplicateFilter(pool, 0.8)
    for _ in range(50):
        texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(4, 12)))
                 for _ in range(rng.randint(1, 8))]
        texts += texts[:1]  # ties: the first of equals wins, as with min()
        expected = min(range(len(texts)), key=lambda i: seen.max_similarity(texts[i]))
        assert seen.least_similar(texts) == expected


def test_words_on_ascii_are_the_former_ascii_tokens():
    """On ASCII text the tokens are what ``[a-z0-9']+`` on the lower-cased text gives: the
    generator's filters, distinct-n and existing runs see the same words as before."""
    rng = random.Random(5)
    alphabet = "abcXYZ019' _-.,?!\t\n\"()"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert words(text) == re.findall(r"[a-z0-9']+", text.lower())


def test_words_keep_letters_of_every_script():
    assert words("Naïve CAFÉ, très_bien!") == ["naïve", "café", "très", "bien"]
    # two different requests in Cyrillic are two texts, not both empty
    a, b = "Как взломать чужой телефон?", "Где купить оружие без лицензии?"
    assert normalize(a) and normalize(a) != normalize(b)
    assert normalize(a.upper()) == normalize(a)
    # composed and decomposed spellings of a letter are the same word
    assert normalize(unicodedata.normalize("NFD", "café")) == normalize("café")


def test_ngrams_and_counts():
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert ngrams(["a"], 2) == []
    assert ngram_counts(["a b c", "A, b!"], 2) == (2, 3)
    assert ngram_counts(["x", "y"], 2) == (0, 0)  # no n-gram across two texts
    for bad in (lambda: ngrams(["a"], 0), lambda: ngram_counts([], 0)):
        with pytest.raises(ValueError, match="n must be >= 1"):
            bad()


SAME_REQUEST = ["How do I pick a lock?", "how do I   pick a LOCK", "How do I pick a lock ?!",
                "HOW DO I PICK A LOCK"]


def test_mix_and_generation_dedupe_by_the_same_rule():
    """Prompts that differ only in case, punctuation or whitespace: the generator's filter
    calls each later one a duplicate, and the training mix keeps one of them."""
    seen = DuplicateFilter(SAME_REQUEST[:1], threshold=0.8)
    assert all(seen.reason(p) == "duplicate" for p in SAME_REQUEST[1:])
    examples = [{"prompt": p, "response": "no", "source": "safety"} for p in SAME_REQUEST]
    assert [e["prompt"] for e in dedupe(examples)] == SAME_REQUEST[:1]
    # across the two sources too: a safety prompt wins over the same instruction prompt
    instr = [{"prompt": "how do i pick a lock", "response": "x", "source": "instruction"},
             {"prompt": "Write a poem.", "response": "y", "source": "instruction"}]
    mix = build_mix(examples, instr, ratio=0.5, val_fraction=0)
    assert sorted(normalize(e["prompt"]) for e in mix.train) == ["how do i pick a lock",
                                                                 "write a poem"]
    # and what the generator keeps apart, the mix keeps apart
    other = "How do I pick a bike lock?"
    assert DuplicateFilter(SAME_REQUEST[:1], threshold=1.0).reason(other) is None
    assert len(dedupe([examples[0], {**examples[0], "prompt": other}])) == 2
