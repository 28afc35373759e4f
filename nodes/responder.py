"""responder: a safe, helpful response to every kept prompt of the round, concurrently.

The ``responder`` template is the responder's system prompt; the user message is the prompt.
In Data Advisor it runs side by side with the summarizer. Each response is stored as it
arrives, so a retry of the node, or a resume, asks only for the prompts not answered yet.

With ``Context.overlap_responses`` the node hands the round's prompts to a background thread
and returns at once, so the next round's critic, generator and summarizer run while they are
answered (the server gets the responder's requests during the single calls of the loop). The
round's record is complete once the hand-off is recorded; the background thread adds the
round's ``responses`` count, and the responder's time (hand-off to last answer) and tokens,
when its answers are in. The responder of the run's last round
(the stopping rule holds after it) waits for every hand-off and then answers, in place, every
kept prompt of the run still without a response: whatever a background batch did not finish
(an endpoint error, an interrupted run resumed) is answered there, so a finished run is
answered in full either way. A background batch that fails for good is raised by the next
hand-off of the run (the run stops with the endpoint's error, as it would in place).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from graph.context import Context
from graph.state import RESPONSE_PREVIEW, State, run_finished
from nodes.common import Stopwatch, run_store, templates
from tools.llm import EndpointError, generate, output_tokens
from tools.store import RunStore


def responder(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Answer the round's prompts (or hand them off: module docstring)."""
    ctx, watch = runtime.context, Stopwatch()
    store = run_store(runtime)
    if ctx.overlap_responses:
        if not run_finished(state, ctx):
            return _hand_off(state, runtime, store, watch)
        wait_for_backlog(store.run_id)
        ids = store.unanswered()  # every round's: the backlog's leftovers too
    else:
        ids = state.prompt_ids
    answers = answer(runtime, store, ids, scope="")
    samples = store.get_samples(state.prompt_ids)
    responses = {s["id"]: s["response"] or "" for s in samples}
    answered = sum(1 for text in responses.values() if text)
    with store.transaction():
        if ctx.overlap_responses:  # the earlier rounds' counts, their leftovers answered
            for round_, count in store.responses_per_round().items():
                store.update_round(round_, responses=count)
        store.update_round(
            state.round,
            responses=answered,
            finished_at=time.time(),
            timing=("responder", watch.seconds, output_tokens(answers)),
        )
    total = store.counts()["responses"] if ctx.overlap_responses else state.responses + answered
    previews = [preview(responses[s["id"]]) for s in samples]
    return {"responses": total, "round_responses": previews}


def answer(runtime: Runtime[Context], store: RunStore, ids: Sequence[str], *,
           scope: str) -> list[AIMessage]:
    """Ask the responder for the prompts of ``ids`` not answered yet, storing each response
    as it arrives (prompts answered by an earlier try are not asked again; a generator that
    ran again replaced its round's rows, responses cleared)."""
    ctx = runtime.context
    system = templates(runtime)["responder"]
    endpoint = ctx.endpoint("responder")
    todo = [s for s in store.get_samples(ids) if s["response"] is None]

    def keep(index: int, got: AIMessage) -> None:
        store.set_responses({todo[index]["id"]: str(got.content).strip()}, endpoint.model)

    return generate(
        "responder",
        endpoint,
        [[("system", system), ("user", s["prompt"])] for s in todo],
        max_concurrency=ctx.max_concurrency,
        temperature=ctx.responder_temperature,
        top_p=ctx.top_p,
        max_tokens=ctx.responder_max_tokens,
        run=store.run_id,
        scope=scope,
        on_answer=keep,
    )


@dataclass
class _Backlog:
    """A run's rounds handed off to be answered in the background."""

    threads: list[threading.Thread] = field(default_factory=list)
    errors: list[EndpointError] = field(default_factory=list)


_BACKLOGS: dict[str, _Backlog] = {}
_BACKLOGS_LOCK = threading.Lock()


def _hand_off(state: State, runtime: Runtime[Context], store: RunStore,
              watch: Stopwatch) -> dict[str, Any]:
    """Start answering the round's prompts in the background; record the hand-off."""
    with _BACKLOGS_LOCK:
        backlog = _BACKLOGS.setdefault(store.run_id, _Backlog())
        failed, backlog.errors = backlog.errors, []
    if failed:  # an earlier round's batch failed for good: stop the run with it (once; what
        raise failed[0]  # it left is answered by the last round's responder)
    ids, round_ = list(state.prompt_ids), state.round

    def work() -> None:
        try:
            answers = answer(runtime, store, ids, scope=f"background:{round_}")
            answered = sum(1 for s in store.get_samples(ids) if s["response"])
            # the responder's time (from the hand-off to the last answer) and tokens
            store.update_round(round_, responses=answered,
                               timing=("responder", watch.seconds, output_tokens(answers)))
        except EndpointError as error:
            with _BACKLOGS_LOCK:
                backlog.errors.append(error)
        except Exception:  # noqa: BLE001 - the store closed under an interrupted run: the
            pass  # last round's responder answers what is left

    thread = threading.Thread(target=work, name=f"responder-{round_}", daemon=True)
    with _BACKLOGS_LOCK:
        backlog.threads.append(thread)
    thread.start()
    with store.transaction():
        store.update_round(round_, finished_at=time.time(),
                           timing=("responder", watch.seconds, 0))
    return {"responses": store.counts()["responses"], "round_responses": []}


def wait_for_backlog(run_id: str) -> None:
    """Wait for every batch of ``run_id`` handed off in this process; forget them (their
    failures included: the caller answers whatever they left)."""
    with _BACKLOGS_LOCK:
        backlog = _BACKLOGS.pop(run_id, None)
    for thread in backlog.threads if backlog else []:
        thread.join()


def forget_backlog(run_id: str) -> None:
    """Forget ``run_id``'s hand-offs without waiting (a new execution of the run starts)."""
    with _BACKLOGS_LOCK:
        _BACKLOGS.pop(run_id, None)


def preview(text: str, limit: int = RESPONSE_PREVIEW) -> str:
    """``text`` cut to ``limit`` characters, marked with "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
