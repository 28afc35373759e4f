"""Safety and over-refusal evaluation of a target model behind an OpenAI-compatible endpoint.

1. :func:`generate_responses`: the target model answers every question (chat completions with
   the model's own chat template, or ``/v1/completions`` with an Alpaca-style template for base
   models), concurrently (:func:`tools.llm.map_concurrently`); answers are appended to a JSONL
   file as they arrive, and a second call skips ids already there (resumable after a crash or
   Ctrl-C).
2. :func:`judge_responses`: a judge (:mod:`evaluation.judges`) labels every response; also
   appended to a JSONL file and resumable.
3. :func:`evaluate_safety` / :func:`evaluate_overrefusal`: run both and write a result JSON
   (``safety-<dataset>-<label>.json`` / ``overrefusal-<dataset>-<label>.json``) in ``out_dir``.

Caches in ``out_dir/cache/``, named by a hash of what determines their content
(:mod:`evaluation.identity`), never by the label:

- ``responses-<key>.jsonl``: ``{id, prompt, category, response}`` per question; the key covers
  the base model, the adapter's content, the prompt format, the generation settings and the
  data set's content; ``responses-<key>.jsonl.meta.json`` holds those parts in full;
- ``judgments-<key>.jsonl``: ``{id, safe, categories, raw, judge, refusal, malformed,
  empty}`` per question; the key is the responses' key and the judge (name, judge model,
  prompt version); a meta JSON likewise.

So a second model, adapter, data set, setting or judge gets its own cache, and the same ones
find theirs again (resumable after a crash or Ctrl-C). A label is a display name: a label that
already names another model in ``out_dir``, or a data set name that already names other data,
is refused (:func:`evaluation.identity.check_result_slot`).

A LoRA adapter is evaluated through the server that serves it: ``EmbeddedServer(lora_modules=
{name: path})`` and ``Endpoint(base_url, model=name)``; ``adapter`` (the folder) identifies it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import openai

from evaluation.data import Question, subset
from evaluation.identity import (
    cache_file,
    cache_identity,
    cache_key,
    check_result_slot,
    claim_cache,
    judge_identity,
    model_identity,
    questions_hash,
)
from evaluation.judges import MEASURE_LABELS, Judge, Judgment, RefusalJudge, make_judge
from evaluation.results import OverrefusalResult, PromptFormat, SafetyResult
from tools.files import append_jsonl, read_jsonl
from tools.llm import Endpoint, EndpointError, batch_progress, map_concurrently, openai_client
from tools.prompt_format import PLAIN_STOP, PLAIN_TEMPLATE, plain_prompt

UNCATEGORIZED = "uncategorized"


def _check_unique(questions: Sequence[Question]) -> None:
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise ValueError(f"duplicate question id {q.id!r}")
        seen.add(q.id)


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _generation_meta(
    endpoint: Endpoint, max_tokens: int, temperature: float, prompt_format: str
) -> dict[str, Any]:
    return {
        "model": endpoint.model,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "prompt_format": prompt_format,
    }


def generate_responses(
    questions: Sequence[Question],
    endpoint: Endpoint,
    out_file: Path,
    *,
    max_tokens: int = 128,
    temperature: float = 0.0,
    prompt_format: PromptFormat = "chat",
    max_concurrency: int = 32,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The target model's response to every question: ``{question id: response}``.

    ``prompt_format="chat"`` sends one user message to ``/v1/chat/completions`` (the server
    applies the model's own chat template, the format it was trained with); ``"plain"`` sends
    :data:`PLAIN_TEMPLATE` to ``/v1/completions`` (stopping at :data:`PLAIN_STOP`) for base
    models without a chat template. Requests run concurrently (``max_concurrency``); each is
    retried by the OpenAI client on transient errors. Responses are appended to ``out_file``
    (JSONL ``{id, prompt, category, response}``) as they arrive, and ids already in it are not
    generated again. A request that still fails raises :class:`EndpointError`; what arrived
    before is kept in the file.

    ``meta`` (default: the served model name and the settings) is written beside the file
    (``<out_file>.meta.json``); a file holding responses made with another meta is an error.
    """
    if prompt_format not in ("chat", "plain"):
        raise ValueError(f"prompt_format must be 'chat' or 'plain', got {prompt_format!r}")
    _check_unique(questions)
    out_file = Path(out_file)
    if meta is None:
        meta = _generation_meta(endpoint, max_tokens, temperature, prompt_format)
    existing = {str(r["id"]): r for r in read_jsonl(out_file) if "id" in r and "response" in r}
    claim_cache(out_file, meta, bool(existing), "responses")

    responses: dict[str, str] = {}
    todo: list[Question] = []
    for q in questions:
        row = existing.get(q.id)
        if row is None:
            todo.append(q)
            continue
        if row.get("prompt") != q.prompt:
            raise ValueError(
                f"{out_file}: question {q.id!r} has another prompt there; "
                "use another label or out_dir for another data set"
            )
        responses[q.id] = str(row["response"] or "")
    if not todo:
        return responses

    client = openai_client(endpoint)

    def ask(q: Question) -> str:
        try:
            if prompt_format == "chat":
                chat = client.chat.completions.create(
                    model=endpoint.model,
                    messages=[{"role": "user", "content": q.prompt}],
                    max_tokens=max_tokens,
                    temperature=temperature,
                )
                return (chat.choices[0].message.content or "") if chat.choices else ""
            out = client.completions.create(
                model=endpoint.model,
                prompt=plain_prompt(q.prompt),
                max_tokens=max_tokens,
                temperature=temperature,
                stop=PLAIN_STOP,
            )
            return (out.choices[0].text or "") if out.choices else ""
        except openai.OpenAIError as exc:
            raise EndpointError("target", endpoint, exc) from exc

    with (
        append_jsonl(out_file, flush_every=8) as write,
        batch_progress(f"responses {endpoint.model}", enabled=progress) as bar,
    ):
        task = bar.add_task("", total=len(questions), completed=len(responses))
        try:
            for index, response in map_concurrently(ask, todo, max_concurrency):
                q = todo[index]
                write({"id": q.id, "prompt": q.prompt, "category": q.category,
                       "response": response})
                responses[q.id] = response
                bar.advance(task)
        finally:
            client.close()
    return responses


# --------------------------------------------------------------------------------------------
# Judging
# --------------------------------------------------------------------------------------------


def _judgment_from_row(row: Mapping[str, Any]) -> Judgment:
    return Judgment(
        safe=bool(row["safe"]),
        categories=list(row.get("categories") or []),
        raw=str(row.get("raw") or ""),
        judge=str(row.get("judge") or ""),
        refusal=row.get("refusal"),
        malformed=bool(row.get("malformed", False)),
        empty=bool(row.get("empty", False)),
    )


def judge_responses(
    items: Iterable[tuple[str, str, str]],
    judge: Judge,
    out_file: Path,
    *,
    chunk_size: int | None = None,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Judgment]:
    """Judge ``(id, prompt, response)`` items: ``{id: Judgment}``.

    Items are judged in chunks of ``chunk_size`` (default: four times the judge's
    ``max_concurrency``, at least 32) and appended to ``out_file`` (JSONL
    ``{id, safe, categories, raw, judge, refusal, malformed, empty}``) after each chunk; ids
    already judged there by the same judge are not judged again. ``meta`` (the cache key's
    parts), when given, is kept beside the file and must match it, as for
    :func:`generate_responses`.
    """
    items = list(items)
    out_file = Path(out_file)
    if chunk_size is None:
        chunk_size = max(32, 4 * int(getattr(judge, "max_concurrency", 8)))
    existing = {
        str(r["id"]): r
        for r in read_jsonl(out_file)
        if "id" in r and "safe" in r and r.get("judge") == judge.name
    }
    if meta is not None:
        claim_cache(out_file, meta, bool(existing), "judgments")
    judgments = {i: _judgment_from_row(existing[i]) for i, _, _ in items if i in existing}
    todo = [item for item in items if item[0] not in judgments]
    if not todo:
        return judgments
    with (
        append_jsonl(out_file) as write,
        batch_progress(f"judging ({judge.name})", enabled=progress) as bar,
    ):
        task = bar.add_task("", total=len(items), completed=len(judgments))
        chunk_size = max(1, chunk_size)
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            results = judge.judge([(prompt, response) for _, prompt, response in chunk])
            if len(results) != len(chunk):
                raise RuntimeError(f"judge {judge.name} returned {len(results)} for {len(chunk)}")
            for (ident, _, _), result in zip(chunk, results, strict=True):
                write({"id": ident, **asdict(result)})
                judgments[ident] = result
            bar.advance(task, len(chunk))
    return judgments


# --------------------------------------------------------------------------------------------
# Evaluations
# --------------------------------------------------------------------------------------------


def _as_judge(judge: Judge | str | None) -> Judge:
    if judge is None:
        return RefusalJudge()
    return make_judge(judge) if isinstance(judge, str) else judge


def questions_sha256(questions: Iterable[Question]) -> str:
    """The content hash of a data set's questions (id, prompt, category), in order."""
    return questions_hash((q.id, q.prompt, q.category) for q in questions)


@dataclass(frozen=True)
class _Run:
    """One model's responses to a data set and their judgments, with what identifies them."""

    selected: list[Question]
    responses: dict[str, str]
    judgments: dict[str, Judgment]
    fields: dict[str, Any]
    """Result fields shared by safety and over-refusal (identity, keys, files, data)."""


def _response_parts(
    model: Mapping[str, Any], prompt_format: str, max_tokens: int, temperature: float,
    dataset_sha256: str,
) -> dict[str, Any]:
    """What determines a response: the cache key's parts (kept in the cache's meta JSON)."""
    plain = prompt_format == "plain"
    return {
        "cache": "responses",
        "model": dict(model),
        "prompt_format": prompt_format,
        "generation": {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "template": PLAIN_TEMPLATE if plain else "chat template of the model",
            "stop": PLAIN_STOP if plain else None,
        },
        "data_sha256": dataset_sha256,
    }


def _respond_and_judge(
    questions: Sequence[Question],
    *,
    kind: Literal["safety", "overrefusal"],
    dataset: str,
    endpoint: Endpoint,
    judge: Judge,
    out_dir: Path,
    label: str,
    model: str,
    adapter: str | None,
    limit: int | None,
    max_tokens: int,
    temperature: float,
    prompt_format: PromptFormat,
    max_concurrency: int,
    progress: bool,
    serving: Mapping[str, Any] | None,
    data: Mapping[str, Any] | None,
) -> _Run:
    """Responses and judgments from the caches keyed by what determines them (module doc)."""
    _check_unique(questions)
    selected = subset(questions, limit)
    if not selected:
        raise ValueError(f"no questions to evaluate for {dataset!r}")
    out_dir = Path(out_dir)
    identity = model_identity(model, adapter, endpoint.model)
    dataset_sha256 = questions_sha256(questions)
    shown_model = {**identity, "prompt_format": prompt_format}
    check_result_slot(out_dir, kind=kind, dataset=dataset, label=label, model=shown_model,
                      dataset_sha256=dataset_sha256)
    response_parts = _response_parts(cache_identity(identity, serving), prompt_format,
                                     max_tokens, temperature, dataset_sha256)
    response_key = cache_key(response_parts)
    judgment_parts = {"cache": "judgments", "responses": response_key,
                      "judge": judge_identity(judge)}
    judgment_key = cache_key(judgment_parts)
    responses_file = cache_file(out_dir, "responses", response_key)
    judgments_file = cache_file(out_dir, "judgments", judgment_key)
    responses = generate_responses(
        selected, endpoint, responses_file, max_tokens=max_tokens, temperature=temperature,
        prompt_format=prompt_format, max_concurrency=max_concurrency, progress=progress,
        meta=response_parts,
    )
    judgments = judge_responses(
        [(q.id, q.prompt, responses[q.id]) for q in selected], judge, judgments_file,
        progress=progress, meta=judgment_parts,
    )
    fields = {
        "model_identity": shown_model,
        "serving": dict(serving) if serving is not None else {"served_name": endpoint.model},
        "prompt_format": prompt_format,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "data": dict(data) if data is not None else None,
        "dataset_sha256": dataset_sha256,
        "categories": sorted({q.category for q in selected if q.category}),
        "cache_key": response_key,
        "judgments_key": judgment_key,
        "responses_file": responses_file.relative_to(out_dir).as_posix(),
        "judgments_file": judgments_file.relative_to(out_dir).as_posix(),
    }
    return _Run(selected, responses, judgments, fields)


def _per_category(
    selected: Sequence[Question], flags: Mapping[str, bool], key: str
) -> dict[str, dict[str, Any]]:
    """``{category: {"n", key: share of flagged}}`` (``uncategorized`` without a category)."""
    by_category: dict[str, list[bool]] = defaultdict(list)
    for q in selected:
        by_category[q.category or UNCATEGORIZED].append(flags[q.id])
    return {cat: {"n": len(f), key: sum(f) / len(f)} for cat, f in by_category.items()}


def evaluate_safety(
    questions: Sequence[Question],
    *,
    dataset: str,
    endpoint: Endpoint,
    judge: Judge | str,
    out_dir: Path,
    label: str,
    model: str,
    adapter: str | None = None,
    limit: int | None = None,
    max_tokens: int = 128,
    temperature: float = 0.0,
    prompt_format: PromptFormat = "chat",
    max_concurrency: int = 32,
    progress: bool = True,
    serving: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    target: str | None = None,
    iteration: int | None = None,
) -> dict[str, Any]:
    """Safety of a target model on harmful questions; writes ``safety-<dataset>-<label>.json``.

    ``endpoint.model`` is what the server serves (the adapter's name for a LoRA adapter);
    ``model`` (base model id or path) and ``adapter`` (its folder) identify the model: with the
    prompt format, the settings and the questions they name the caches, so another adapter
    never reuses this one's responses. ``label`` is the display name; one label names one
    model in ``out_dir`` and one ``dataset`` name one data set (else ValueError). ``limit``
    evaluates that many questions spread evenly over the data set (:func:`subset`).
    ``serving`` (how the model was served) and ``data`` (where the questions came from) are
    recorded, and ``target`` / ``iteration`` (the target's name in an experiment of several, the
    experiment's iteration). The result::

        {"kind": "safety", "dataset", "label", "model", "adapter", "judge", "n",
         "measure",        # what an unsafe verdict means: "harmful" (Llama Guard) or
                           # "not_refused" (refusal judge); "measure_label": its words
         "safety_score",   # share judged safe, 0..1
         "harmful_rate",   # 1 - safety_score: the share of `measure`
         "per_category": {category: {"n", "harmful_rate"}},  # share of `measure` too
         "categories",     # categories found in the questions evaluated
         "malformed",      # judge outputs that could not be parsed (counted as safe)
         "empty_responses",
         "model_identity", "serving", "prompt_format", "max_tokens", "temperature", "data",
         "dataset_sha256", "cache_key", "judgments_key",
         "responses_file", "judgments_file"}  # paths relative to out_dir (cache/...)

    With the refusal judge, ``judge`` and ``measure`` say so: the score is then a refusal rate.
    """
    judge = _as_judge(judge)
    run = _respond_and_judge(
        questions, kind="safety", dataset=dataset, endpoint=endpoint, judge=judge,
        out_dir=out_dir, label=label, model=model, adapter=adapter, limit=limit,
        max_tokens=max_tokens, temperature=temperature, prompt_format=prompt_format,
        max_concurrency=max_concurrency, progress=progress, serving=serving, data=data,
    )
    selected, judgments = run.selected, run.judgments
    n = len(selected)
    safe = sum(judgments[q.id].safe for q in selected)
    measure = getattr(judge, "measure", "unsafe")
    unsafe = {q.id: not judgments[q.id].safe for q in selected}
    result = SafetyResult(
        dataset=dataset,
        label=label,
        model=model,
        adapter=adapter,
        target=target,
        iteration=iteration,
        judge=judge.description,
        measure=measure,
        measure_label=MEASURE_LABELS.get(measure, measure),
        n=n,
        safety_score=safe / n,
        harmful_rate=(n - safe) / n,
        per_category=_per_category(selected, unsafe, "harmful_rate"),
        malformed=sum(judgments[q.id].malformed for q in selected),
        empty_responses=sum(not run.responses[q.id].strip() for q in selected),
        **run.fields,
    )
    result.write(Path(out_dir))
    return result.to_dict()


def evaluate_overrefusal(
    questions: Sequence[Question],
    *,
    dataset: str,
    endpoint: Endpoint,
    out_dir: Path,
    label: str,
    model: str,
    adapter: str | None = None,
    judge: Judge | str | None = None,
    limit: int | None = None,
    max_tokens: int = 128,
    temperature: float = 0.0,
    prompt_format: PromptFormat = "chat",
    max_concurrency: int = 32,
    progress: bool = True,
    serving: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    target: str | None = None,
    iteration: int | None = None,
) -> dict[str, Any]:
    """Over-refusal on benign-but-scary prompts; writes ``overrefusal-<dataset>-<label>.json``.

    Every question given counts as benign: select the benign rows of a mixed set first
    (:func:`evaluation.data.prompt_set` ``where``). The refusal rate is the share of responses
    the judge marks as refusals (default: the refusal-string judge; a given judge must measure
    refusal). Empty responses count as refusals. Caches, names and arguments as for
    :func:`evaluate_safety`. The result: ``{"kind": "overrefusal", "dataset", "label",
    "model", "adapter", "judge", "measure": "refused", "n", "refusal_rate",
    "per_category": {category: {"n", "refusal_rate"}}, "categories", ...}`` with the same
    identity, cache and file fields.
    """
    judge = _as_judge(judge)
    if not getattr(judge, "measures_refusal", False):
        raise ValueError(f"judge {judge.name} does not measure refusal; use the refusal judge")
    run = _respond_and_judge(
        questions, kind="overrefusal", dataset=dataset, endpoint=endpoint, judge=judge,
        out_dir=out_dir, label=label, model=model, adapter=adapter, limit=limit,
        max_tokens=max_tokens, temperature=temperature, prompt_format=prompt_format,
        max_concurrency=max_concurrency, progress=progress, serving=serving, data=data,
    )
    selected = run.selected
    refused = {q.id: bool(run.judgments[q.id].refusal) for q in selected}
    n = len(selected)
    result = OverrefusalResult(
        dataset=dataset,
        label=label,
        model=model,
        adapter=adapter,
        target=target,
        iteration=iteration,
        judge=judge.description,
        measure="refused",
        measure_label=MEASURE_LABELS["refused"],
        n=n,
        refusal_rate=sum(refused.values()) / n,
        per_category=_per_category(selected, refused, "refusal_rate"),
        **run.fields,
    )
    result.write(Path(out_dir))
    return result.to_dict()
