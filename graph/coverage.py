"""What ``status``, ``history`` and the export's card show of a run's prompt judge and its
coverage of the taxonomy (``tools.taxonomy.coverage``, on the kept prompts' categories).

Nothing is shown for a run without a judge (``Context.judge``): its output stays as before.
"""

from __future__ import annotations

from typing import Any

from graph.context import Context
from tools.store import RunStore
from tools.taxonomy import coverage, coverage_line, load_taxonomy

JUDGE_COLUMNS = ("judged kept/unjudged/not harmful", "coverage", "weakness landed")
"""The columns ``history`` adds for a run with a judge."""


def run_coverage(store: RunStore, ctx: Context, before_round: int | None = None
                 ) -> dict[str, Any]:
    """Coverage of the run's taxonomy by its kept prompts (of the rounds before
    ``before_round``, all without it)."""
    return coverage(store.taxonomy_labels(before_round=before_round), load_taxonomy(ctx.taxonomy))


def judge_status(store: RunStore, ctx: Context) -> dict[str, Any]:
    """``status``'s lines about the judge: none without one."""
    if not ctx.judge:
        return {}
    totals: dict[str, int] = {}
    for counts in store.judge_counts().values():
        for outcome, n in counts.items():
            totals[outcome] = totals.get(outcome, 0) + n
    cov = run_coverage(store, ctx)
    shown = {
        "judge": f"{ctx.judge} ({ctx.endpoint('judge').model})",
        "judged": {k: totals.get(k, 0) for k in ("harmful", "unjudged", "not_harmful")},
        "coverage": coverage_line(cov),
        "prompts_per_category": cov["counts"],
    }
    if unread := store.unjudged_answers(limit=1):
        answer = " ".join(str(unread[0]["judge_answer"] or "").split())
        shown["unjudged_example"] = (f"{answer[:200]}{'...' if len(answer) > 200 else ''} "
                                     "(the judge's answer to the first unjudged prompt)")
    return shown


def judge_rounds(store: RunStore, ctx: Context) -> dict[int, dict[str, Any]]:
    """Per round of a run with a judge: its verdict counts (``judged``) and the coverage after
    it (``coverage``, over every round up to it); ``{}`` without a judge."""
    if not ctx.judge:
        return {}
    counts = store.judge_counts()
    return {
        r["round"]: {"judged": counts.get(r["round"], {}),
                     "coverage": run_coverage(store, ctx, before_round=r["round"] + 1)}
        for r in store.rounds()
    }


def judge_cells(record: dict[str, Any]) -> tuple[str, str, str]:
    """``history``'s :data:`JUDGE_COLUMNS` cells of one round (with :func:`judge_rounds`)."""
    judged = record.get("judged") or {}
    cov = record.get("coverage") or {}
    landed = [
        f"{entry['category'] or '-'} ({'under' if entry['under_covered'] else 'not under'})"
        if entry and entry.get("under_covered") is not None else "-"
        for entry in record.get("weakness_coverage") or []
    ]
    return (
        f"{judged.get('harmful', 0)}/{judged.get('unjudged', 0)}/{judged.get('not_harmful', 0)}",
        f"{cov.get('covered', 0)}/{cov.get('categories', 0)}, H={cov.get('entropy', 0.0):.2f}",
        "; ".join(landed) or "-",
    )
