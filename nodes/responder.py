"""responder: a safe, helpful response to every kept prompt of the round, concurrently.

The ``responder`` template is the responder's system prompt; the user message is the prompt.
In Data Advisor it runs side by side with the summarizer. Each response is stored as it
arrives, so a retry of the node, or a resume, asks only for the prompts not answered yet.
"""

from __future__ import annotations

import time
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from graph.context import Context
from graph.state import RESPONSE_PREVIEW, State
from nodes.common import Stopwatch, run_store, templates
from tools.llm import generate, output_tokens


def responder(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Answer the round's prompts."""
    ctx, watch = runtime.context, Stopwatch()
    system = templates(runtime)["responder"]
    endpoint = ctx.endpoint("responder")
    store = run_store(runtime)
    # Prompts answered by an earlier try of this node (stored as they came) are not asked
    # again; a generator that ran again replaced the round's rows, responses cleared.
    todo = [s for s in store.get_samples(state.prompt_ids) if s["response"] is None]

    def keep(index: int, answer: AIMessage) -> None:
        store.set_responses({todo[index]["id"]: str(answer.content).strip()}, endpoint.model)

    answers = generate(
        "responder",
        endpoint,
        [[("system", system), ("user", s["prompt"])] for s in todo],
        max_concurrency=ctx.max_concurrency,
        temperature=ctx.responder_temperature,
        top_p=ctx.top_p,
        max_tokens=ctx.responder_max_tokens,
        run=store.run_id,
        on_answer=keep,
    )
    samples = store.get_samples(state.prompt_ids)
    responses = {s["id"]: s["response"] or "" for s in samples}
    answered = sum(1 for text in responses.values() if text)
    with store.transaction():
        store.update_round(
            state.round,
            responses=answered,
            finished_at=time.time(),
            timing=("responder", watch.seconds, output_tokens(answers)),
        )
    previews = [preview(responses[s["id"]]) for s in samples]
    return {"responses": state.responses + answered, "round_responses": previews}


def preview(text: str, limit: int = RESPONSE_PREVIEW) -> str:
    """``text`` cut to ``limit`` characters, marked with "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
