"""rule_check: a deterministic check of the summarizer's update, correcting what it can.

Rules: no line of the previous summary is lost; the new category is present (unless it was
already covered), on a line of its own that does not restate an old one; no line is longer than
``max_line_words`` words; no duplicate lines; no line that is neither an old category nor the
new one; at most ``max_summary_lines`` lines (the oldest are dropped when exceeded, so the
prompt never outgrows the context). The verdict
(``accepted`` or ``corrected``) and the corrections are recorded per round.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context
from graph.state import State
from nodes.filters import normalize, overlaps
from nodes.run import Stopwatch, run_store


def check_summary(
    previous: list[str], proposed: list[str], new_category: str, *, max_words: int, max_lines: int
) -> tuple[list[str], list[str]]:
    """Return the corrected summary and the list of corrections (empty when accepted)."""
    corrections: list[str] = []
    old = {normalize(line) for line in previous}
    already_covered = overlaps(new_category, previous)
    seen: set[str] = set()
    lines: list[str] = []
    for line in proposed:
        words = line.split()
        if len(words) > max_words:
            corrections.append(f"shortened line: {line!r}")
            line = " ".join(words[:max_words])
        key = normalize(line)
        if not key:
            continue
        if key in seen:
            corrections.append(f"removed duplicate line: {line!r}")
            continue
        seen.add(key)
        lines.append(line)
    new_lines = [line for line in lines if normalize(line) not in old]

    def is_new_category(line: str) -> bool:  # names it, and does not restate an old line
        return overlaps(line, [new_category]) and not overlaps(line, previous)

    for line in new_lines:
        if already_covered or not is_new_category(line):
            corrections.append(f"removed line that is not the new category: {line!r}")
    new_lines = [] if already_covered else [line for line in new_lines if is_new_category(line)][:1]
    for line in previous:
        if normalize(line) not in seen:
            corrections.append(f"restored lost line: {line!r}")
    if not already_covered and not new_lines:
        corrections.append(f"added missing new category: {new_category!r}")
        new_lines = [" ".join(new_category.split()[:max_words])]
    final = [*previous, *new_lines]
    if len(final) > max_lines:
        corrections.append(f"compacted: dropped the {len(final) - max_lines} oldest line(s)")
        final = final[-max_lines:]
    return final, corrections


def rule_check(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Check and correct the proposed summary."""
    ctx, watch = runtime.context, Stopwatch()
    summary, corrections = check_summary(
        state.summary,
        state.proposed_summary,
        state.weakness,
        max_words=ctx.max_line_words,
        max_lines=ctx.max_summary_lines,
    )
    run_store(runtime).update_round(
        state.round,
        summary_after=summary,
        corrections=corrections,
        rule_check="corrected" if corrections else "accepted",
        timing=("rule_check", watch.seconds, 0),
    )
    return {"summary": summary}
