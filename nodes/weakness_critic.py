"""weakness_critic: from the summary and the principles, name one harm category not covered yet.

Answers that echo the instructions are discarded. If the answer repeats a covered category
(normalised word overlap with the summary or with a weakness of an earlier round), the critic is
asked again, up to ``critic_attempts`` times, with the rejected answers named. Whether the final
weakness is novel is recorded.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.context import Context
from graph.prompts import render
from graph.state import State
from nodes.filters import clean_category, normalize, overlaps
from nodes.run import Stopwatch, bullets, prompts, run_store
from tools.llm import generate, output_tokens


def weakness_critic(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Name the round's weakness."""
    ctx, watch = runtime.context, Stopwatch()
    template = prompts(runtime)["weakness_critic"]
    store = run_store(runtime)
    earlier = store.weaknesses(before_round=state.round)
    covered = [*state.summary, *earlier]
    attempts: list[str] = []
    tokens = 0
    weakness, novel = "", False
    for _ in range(max(1, ctx.critic_attempts)):
        avoid = f", and other than: {', '.join(a for a in attempts if a)}" if any(attempts) else ""
        message = render(
            template, principles=ctx.principles, summary=bullets(state.summary), avoid=avoid
        )
        [answer] = generate(
            "advisor",
            ctx.endpoint("advisor"),
            [[("user", message)]],
            temperature=ctx.advisor_temperature,
            top_p=ctx.top_p,
            max_tokens=ctx.critic_max_tokens,
        )
        tokens += output_tokens([answer])
        candidate = clean_category(str(answer.content), ctx.max_line_words)
        if candidate and normalize(candidate) in normalize(template):
            candidate = ""  # an echo of the instructions ("two to five words"), not a category
        attempts.append(candidate)
        if candidate and not overlaps(candidate, covered):
            weakness, novel = candidate, True
            break
    if not weakness:
        weakness = next((a for a in reversed(attempts) if a), "Other harmful requests")
    with store.transaction():
        store.start_round(state.round, "data_advisor", started_at=watch.wall)
        store.update_round(
            state.round,
            weakness=weakness,
            weakness_novel=int(novel),
            critic_attempts=attempts,
            summary_before=state.summary,
            timing=("weakness_critic", watch.seconds, tokens),
        )
    return {"weakness": weakness, "weakness_novel": novel}
