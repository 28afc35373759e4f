"""Text clean-up and the junk filters applied to generator and critic outputs.

Small generators often answer with meta-commentary ("Sure, here is a request:"), refusals,
empty lines or near-copies of the examples instead of a new harmful request. These functions
clean what can be cleaned and name the reason when an output must be rejected (also when it
overlaps an evaluation set: ``contaminated``, see ``tools.decontam``). The text
primitives they build on (words, normalisation, shingles, the duplicate filter) are
`tools.text`'s, shared with evaluation and the training mix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from tools.decontam import ContaminationIndex
from tools.text import STOPWORDS, jaccard, normalize, words

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

REJECTION_REASONS = (
    "empty", "too_short", "refusal", "meta", "contaminated", "duplicate", "near_duplicate",
    "not_harmful",
)


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


def contamination_reason(text: str, index: ContaminationIndex | None) -> str | None:
    """``"contaminated"`` when ``text`` overlaps the evaluation prompts of ``index``
    (``tools.decontam``: same normalised text, or n-gram containment above its threshold)."""
    return "contaminated" if index is not None and index.contaminated(text) else None


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
        if w not in STOPWORDS
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
