"""rule_check: a deterministic check of the summarizer's update, correcting what it can.

The summary has two kinds of lines: a category (``Animal cruelty``) and a *group* of related
categories under a parent (``Fraud: pensioner; online; phone``: the pensioner, online and phone
fraud categories, each child written without the parent's words). See :func:`split_line`.

Rules (the proposal is the whole summary, or with ``Context.summary_update = "delta"`` the
changed lines only, the others kept as they were): no line of the previous summary is lost;
each of the round's new categories (one, or W of them) is present (unless it was already
covered), on a line of its own that does not restate an old one, or as a new child of the old
group it belongs to; no category is longer than ``max_line_words`` words; no duplicate lines;
no line that is neither an old one nor a new category. At most ``max_summary_lines`` lines:
when the bound is exceeded the summary is compacted, by default by merging related lines
under a parent (``summary_overflow = "merge"``, the paper's "merge similar issues"): the oldest
line that shares a word with another joins it in a group named by the shared words (a line
sharing no word joins the ``Other`` group). A group lists at most ``max_line_children``
children; beyond that its oldest children are counted (``+3 more``), never silently dropped.
``summary_overflow = "drop_oldest"`` is the former design (the oldest lines are dropped), kept
for comparison (``benchmarks/bench_novelty.py``). The verdict (``accepted`` or ``corrected``)
and the corrections are recorded per round, and per weakness whether the proposal had it
(``weakness_checks``: accepted, added, already covered).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from langgraph.runtime import Runtime

from graph.context import Context
from graph.state import State
from nodes.common import Stopwatch, run_store
from nodes.filters import content_words, overlaps
from tools.text import normalize, words

OTHER = "Other"
"""The parent of lines that share no word with any other line."""

_MORE = re.compile(r"^\+\s*(\d+)\s+more$", re.IGNORECASE)
_FOLDED = re.compile(r"^(.+) \((\d+)\)$")
"""A group folded into ``Other`` as one child: its label and how many categories it held."""
_EDGE_STOPWORDS = frozenset("a an and the of to in on for or with by about from at as".split())


@dataclass
class Line:
    """One summary line: a category (``label`` empty, one child) or a group of children."""

    label: str
    children: list[str] = field(default_factory=list)
    more: int = 0
    """Children counted but no longer listed (the group was full)."""

    @property
    def is_group(self) -> bool:
        """True for a ``Parent: child; child`` line."""
        return bool(self.label)

    def names(self) -> list[str]:
        """The full category names the line lists (a child with its parent's words; a folded
        group, ``Fraud (9)`` under ``Other``, lists none)."""
        if not self.is_group or self.label == OTHER:
            return [c for c in self.children if not _FOLDED.match(c)]
        own = content_words(self.label)
        return [c if own <= content_words(c) else f"{c} {self.label.lower()}"
                for c in self.children]

    def render(self) -> str:
        """The line as the summary shows it."""
        if not self.is_group:
            return self.children[0]
        shown = [*self.children, *([f"+{self.more} more"] if self.more else [])]
        return f"{self.label}: {'; '.join(shown)}"

    def size(self) -> int:
        """How many categories the line stands for (listed and counted)."""
        folded = [_FOLDED.match(c) for c in self.children]
        return sum(int(m.group(2)) if m else 1 for m in folded) + self.more


def split_line(line: str) -> Line:
    """Parse a summary line. ``Parent: a; b`` is a group when it has two or more children (or a
    ``+N more`` count); anything else, colons included, is one category. A new :class:`Line`
    each call (callers change it), from a cached parse."""
    label, children, more = _parse_line(line)
    return Line(label, list(children), more)


@lru_cache(maxsize=1 << 14)
def _parse_line(line: str) -> tuple[str, tuple[str, ...], int]:
    """``(label, children, more)`` of a line (cached: a long run's summary has ~1,000
    categories on its 40 lines, read several times a round, and most lines stay as they are)."""
    label, sep, rest = line.partition(":")
    parts = [p.strip() for p in rest.split(";") if p.strip()] if sep else []
    more = sum(int(m.group(1)) for p in parts if (m := _MORE.match(p)))
    children = tuple(p for p in parts if not _MORE.match(p))
    if label.strip() and content_words(label) and (len(children) >= 2 or (children and more)):
        return label.strip(), children, more
    return "", (line.strip(),), 0


@lru_cache(maxsize=1 << 14)
def _line_names(line: str) -> tuple[str, ...]:
    return tuple(split_line(line).names())


def summary_names(summary: list[str]) -> list[str]:
    """Every category the summary lists by name, groups expanded (``pensioner fraud``)."""
    return [name for line in summary for name in _line_names(line)]


def summary_size(summary: list[str]) -> int:
    """How many categories the summary stands for (listed and counted)."""
    return sum(split_line(line).size() for line in summary)


class Checked(NamedTuple):
    """What :func:`check_summary` returns."""

    summary: list[str]
    """The corrected summary."""
    corrections: list[str]
    """What it corrected (empty when the proposal is accepted as it is)."""
    verdicts: dict[str, str]
    """Per new category: ``accepted`` (the proposal has it), ``added`` (the rule check added
    it) or ``already covered`` (the summary had it: nothing to add)."""


def check_summary(
    previous: list[str],
    proposed: list[str],
    new_categories: str | Sequence[str],
    *,
    max_words: int,
    max_lines: int,
    max_children: int = 50,
    overflow: str = "merge",
    delta: bool = False,
) -> Checked:
    """Check the proposed summary against the previous one and the round's new categories
    (one, or a round's W). Every new category not covered already must be present, each on
    its own line or as a new kind of an old group, no two on one line.

    ``delta``: the proposal is the changed lines only (``Context.summary_update``): an old line
    it does not repeat is kept as it is, not restored as lost, and ``Group: kind`` (an old
    group's label and new kinds) stands for the group's line with them added; the rest is
    checked alike."""
    corrections: list[str] = []
    news = [new_categories] if isinstance(new_categories, str) else list(new_categories)
    old_names = summary_names(previous)
    pending = list(dict.fromkeys(c for c in news if not overlaps(c, old_names)))
    verdicts = {c: "already covered" for c in news if c not in pending}
    lines = _clean_lines(_expanded(proposed, previous) if delta else proposed, max_words,
                         corrections)
    old = {normalize(line) for line in previous}
    old_groups = {normalize(g.label): i for i, g in enumerate(map(split_line, previous))
                  if g.is_group}
    final = list(previous)
    placed: set[str] = set()
    seen = {normalize(line) for line in lines}
    merges: list[Line] = []

    def which_new(name: str) -> str | None:
        """The new category not placed yet that ``name`` names (and does not restate an old
        one), or None."""
        if overlaps(name, old_names):
            return None
        return next((c for c in pending if c not in placed and overlaps(name, [c])), None)

    for line in lines:
        if normalize(line) in old:
            continue
        parsed = split_line(line)
        at = old_groups.get(normalize(parsed.label)) if parsed.is_group else None
        if at is not None:  # an old group, perhaps with a new category as a new child
            before = split_line(previous[at])
            kept = {normalize(c) for c in before.children}
            extra = [c for c in parsed.children if normalize(c) not in kept]
            names = Line(before.label, extra).names()
            found = _distinct_new([which_new(name) for name in names])
            if extra and found:  # each extra kind a new category: added to the group
                for child, new in zip(extra, found, strict=True):
                    grown = _with_child(split_line(final[at]), child, max_children)
                    final[at] = grown.render()
                    placed.add(new)
            elif extra:
                corrections.append(f"removed line that is not a new category: {line!r}")
            if {normalize(c) for c in parsed.children} >= kept:
                seen.add(normalize(previous[at]))
            continue
        if parsed.is_group and not parsed.more and not any(map(_FOLDED.match, parsed.children)):
            merges.append(parsed)  # perhaps the summarizer merging similar old lines
            continue
        category = which_new(line)
        if category is None:
            corrections.append(f"removed line that is not a new category: {line!r}")
            continue
        final.append(line)
        placed.add(category)
    absorbed, merged, with_new = _accept_merges(
        merges, previous, seen, which_new if set(pending) - placed else None,
        max_children, corrections)
    if absorbed:
        seen |= {normalize(previous[i]) for i in absorbed}
        final = [merged.get(i, line) for i, line in enumerate(final)
                 if i not in absorbed or i in merged]
        placed |= with_new
    for line in previous:
        if normalize(line) not in seen and not delta:
            corrections.append(f"restored lost line: {line!r}")
    for category in pending:
        verdicts[category] = "accepted" if category in placed else "added"
        if category not in placed:
            corrections.append(f"added missing new category: {category!r}")
            final.append(" ".join(category.split()[:max_words]))
    if len(final) > max_lines:
        final = _compact(final, max_lines, max_children, overflow, corrections)
    return Checked(final, corrections, verdicts)


def changes(previous: list[str], proposed: list[str]) -> tuple[list[str], list[str]]:
    """A rewritten summary as what it changes: its lines that are not old ones (in order) and
    the old lines it left out (:attr:`graph.state.State.proposed_summary`)."""
    old = {normalize(line) for line in previous}
    kept = {normalize(line) for line in proposed}
    return ([line for line in proposed if normalize(line) not in old],
            [line for line in previous if normalize(line) not in kept])


def rewritten(previous: list[str], added: list[str], dropped: list[str]) -> list[str]:
    """The rewrite :func:`changes` took apart (the old lines kept, then the others): it checks
    to the same summary and corrections as the rewrite as it was written, but for an old line
    written twice (no "removed duplicate line" then). A proposal that repeats an old line is a
    whole one (a checkpoint written before proposals were kept as changes): as it is."""
    old = {normalize(line) for line in previous}
    if any(normalize(line) in old for line in added):
        return added
    gone = {normalize(line) for line in dropped}
    return [line for line in previous if normalize(line) not in gone] + added


def _expanded(delta: list[str], previous: list[str]) -> list[str]:
    """A delta's ``Group: kind`` lines (an old group's label, then kinds) as the group's whole
    line with the kinds added; any other line as it is."""
    groups = {normalize(g.label): g for g in map(split_line, previous) if g.is_group}
    lines = []
    for line in delta:
        label, sep, rest = line.partition(":")
        group = groups.get(normalize(label)) if sep else None
        kinds = [k.strip() for k in rest.split(";") if k.strip()]
        if group is None or not kinds or split_line(line).more:
            lines.append(line)
            continue
        known = {normalize(c) for c in group.children}
        added = [k for k in kinds if normalize(k) not in known]
        lines.append(Line(group.label, [*group.children, *added], group.more).render())
    return lines


def _distinct_new(found: list[str | None]) -> list[str] | None:
    """``found`` when every entry names a new category and no two the same one, else None."""
    named = [f for f in found if f is not None]
    return named if len(named) == len(found) == len(set(named)) else None


def _key(name: str) -> frozenset[str]:
    return content_words(name)


def _accept_merges(
    merges: list[Line],
    previous: list[str],
    present: set[str],
    which_new: Callable[[str], str | None] | None,
    max_children: int,
    corrections: list[str],
) -> tuple[set[int], dict[int, str], set[str]]:
    """The summarizer's merges of old lines that keep every category: each child an old
    category (or one new category, the one ``which_new`` names, each in one merge at most), at
    most ``max_children``, and every old line it touches taken in whole, by the accepted merges
    together, and no longer in the proposal as it was. Returns the indices of the absorbed old
    lines, each merged line by the first old line it takes, and the new categories they hold."""
    old = [split_line(line) for line in previous]
    old_keys = [{_key(n) for n in line.names()} for line in old]
    whole = [not line.more and not any(map(_FOLDED.match, line.children)) for line in old]
    every = set().union(*old_keys) if old_keys else set()
    accepted: list[tuple[Line, set[frozenset[str]], str | None]] = []
    taken: set[frozenset[str]] = set()
    for merge in merges:
        keys: set[frozenset[str]] = set()
        new: str | None = None
        for name in merge.names():
            if _key(name) in every and _key(name) not in keys:
                keys.add(_key(name))
                continue
            if which_new is not None and new is None:
                new = which_new(name)
                if new is not None:
                    continue
            keys = set()
            break
        one_new = new is None or all(a[2] != new for a in accepted)
        if len(keys) + (new is not None) >= 2 and len(merge.children) <= max_children \
                and not keys & taken and one_new:
            accepted.append((merge, keys, new))
            taken |= keys
        else:
            corrections.append(f"removed line that is not a new category: {merge.render()!r}")
    while True:  # drop merges that would split an old line or leave it twice
        union = set().union(*(keys for _, keys, _ in accepted)) if accepted else set()
        broken = [i for i, keys in enumerate(old_keys) if keys & union and not (
            keys <= union and whole[i] and normalize(previous[i]) not in present)]
        bad = [a for a in accepted if any(a[1] & old_keys[i] for i in broken)]
        if not bad:
            break
        for merge, _, _ in bad:
            corrections.append(f"removed merge that splits an old line: {merge.render()!r}")
        accepted = [a for a in accepted if a not in bad]
    union = set().union(*(keys for _, keys, _ in accepted)) if accepted else set()
    absorbed = {i for i, keys in enumerate(old_keys) if keys and keys <= union}
    at = {min(i for i in absorbed if old_keys[i] & keys): merge.render()
          for merge, keys, _ in accepted}  # each merge where its first old line was
    return absorbed, at, {a[2] for a in accepted if a[2] is not None}


def _clean_lines(proposed: list[str], max_words: int, corrections: list[str]) -> list[str]:
    """Proposed lines with over-long categories shortened and duplicates removed."""
    seen: set[str] = set()
    lines: list[str] = []
    for line in proposed:
        parsed = split_line(line)
        if any(len(c.split()) > max_words for c in parsed.children):
            corrections.append(f"shortened line: {line!r}")
            parsed.children = [" ".join(c.split()[:max_words]) for c in parsed.children]
            line = parsed.render()
        key = normalize(line)
        if not key:
            continue
        if key in seen:
            corrections.append(f"removed duplicate line: {line!r}")
            continue
        seen.add(key)
        lines.append(line)
    return lines


def _compact(lines: list[str], max_lines: int, max_children: int, overflow: str,
             corrections: list[str]) -> list[str]:
    """Bring the summary down to ``max_lines`` lines, by merging or by dropping the oldest."""
    if overflow == "drop_oldest":
        corrections.append(f"compacted: dropped the {len(lines) - max_lines} oldest line(s)")
        return lines[-max_lines:]
    parsed = [split_line(line) for line in lines]
    while len(parsed) > max(max_lines, 1):
        i, j, label = _merge_pair(parsed, max_children)
        merged = _merge(parsed[i], parsed[j], label, max_children)
        corrections.append(
            f"merged {parsed[i].render()!r} and {parsed[j].render()!r} into {merged.label!r}")
        # the merged line goes last: lines are kept in the order they were last extended, so
        # the next merge starts from the line left alone the longest
        parsed = [p for n, p in enumerate(parsed) if n not in (i, j)] + [merged]
    return [p.render() for p in parsed]


def _key_words(line: Line) -> frozenset[str]:
    return content_words(line.label if line.is_group else line.children[0])


def _merge_pair(lines: list[Line], max_children: int) -> tuple[int, int, str]:
    """The lines to merge and the parent's label: the oldest line that shares a word with
    another, with the line it shares the most words with (the oldest of equals), lines not
    full yet first (a category of two words joins its other word's group when one is full);
    else the oldest line outside ``Other`` (a category before a group) goes to ``Other``."""
    keys = [_key_words(line) for line in lines]
    room = [line.size() < max_children for line in lines]
    other = next((n for n, line in enumerate(lines) if line.label == OTHER), None)
    rest = sorted((n for n, line in enumerate(lines) if line.label != OTHER),
                  key=lambda n: (lines[n].is_group, n))
    for full_too in (False, True):
        for i, own in enumerate(keys):
            if lines[i].label == OTHER or not (room[i] or full_too):
                continue
            best = max((n for n in range(len(lines)) if n != i and lines[n].label != OTHER
                        and (room[n] or full_too) and own & keys[n]),
                       key=lambda n: (len(own & keys[n]), -n), default=None)
            if best is not None:
                return i, best, _label(lines[best], own & keys[best])
        # before a full group overflows: a category that shares no word with a line that has
        # room goes to ``Other`` while it has room
        alone = [n for n in rest if not lines[n].is_group]
        if not full_too and alone and (other is None and len(alone) > 1 or other is not None
                                       and room[other]):
            return (alone[0], other, OTHER) if other is not None else (alone[0], alone[1], OTHER)
    if other is not None:
        return rest[0], other, OTHER
    return rest[0], rest[1], OTHER


def _label(line: Line, shared: frozenset[str]) -> str:
    """A parent label from a line's own words that are among ``shared``: ``Fraud``."""
    text = line.label if line.is_group else line.children[0]
    kept = [w for w in words(text) if content_words(w) <= shared and content_words(w)]
    label = " ".join(dict.fromkeys(kept)) or text
    return label[:1].upper() + label[1:]


def _strip(name: str, label: str) -> str:
    """A child's text under a parent: the name without the parent's words (whole if nothing
    would be left)."""
    own = content_words(label)
    kept = [w for w in name.split() if not content_words(w) or not content_words(w) <= own]
    while kept and kept[0].lower() in _EDGE_STOPWORDS:
        kept = kept[1:]
    while kept and kept[-1].lower() in _EDGE_STOPWORDS:
        kept = kept[:-1]
    return " ".join(kept) if content_words(" ".join(kept)) else name


def _with_child(group: Line, child: str, max_children: int) -> Line:
    return _merge(group, Line("", [f"{child} {group.label.lower()}"]), group.label, max_children)


def _merge(a: Line, b: Line, label: str, max_children: int) -> Line:
    """One group holding the categories of ``a`` and ``b`` (``b``'s are newer), at most
    ``max_children`` listed: the oldest beyond that are counted."""
    if label == OTHER:  # a category keeps its name, a group is folded to its label and size
        children = [c for line in (a, b) for c in (
            line.children if line.label == OTHER
            else [f"{line.label} ({line.size()})"] if line.is_group else line.names())]
    else:
        children = [_strip(name, label) for line in (a, b) for name in line.names()]
    children = list(dict.fromkeys(children))  # a category listed twice is one category
    more = a.more + b.more + max(0, len(children) - max_children)
    return Line(label, children[-max(max_children, 1):], more)


def rule_check(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Check and correct the proposed summary, with the round's W new categories."""
    ctx, watch = runtime.context, Stopwatch()
    delta = ctx.summary_update == "delta"
    summary, corrections, verdicts = check_summary(
        state.summary,
        state.proposed_summary if delta
        else rewritten(state.summary, state.proposed_summary, state.summary_dropped),
        state.weaknesses,
        max_words=ctx.max_line_words,
        max_lines=ctx.max_summary_lines,
        max_children=ctx.max_line_children,
        overflow=ctx.summary_overflow,
        delta=delta,
    )
    run_store(runtime).update_round(
        state.round,
        summary_after=summary,
        corrections=corrections,
        rule_check="corrected" if corrections else "accepted",
        weakness_checks=[{"weakness": w, "verdict": verdicts[w]} for w in state.weaknesses],
        timing=("rule_check", watch.seconds, 0),
    )
    # the proposal is consumed (the round record keeps it): every later checkpoint of the run
    # would carry a second copy of the summary
    return {"summary": summary, "proposed_summary": [], "summary_dropped": []}
