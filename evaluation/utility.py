"""Utility evaluation: MMLU accuracy, by the log-likelihood of the answer letters.

Two backends give the same predictions (up to float noise):

- :func:`score_with_transformers`: batched forward passes (left padding, explicit position ids)
  of a causal LM, optionally with a PEFT (LoRA) adapter; the prediction is the letter whose
  token (``" A"``, or ``"A"`` if higher) has the highest next-token log-prob after the prompt.
- :func:`score_with_endpoint`: an OpenAI-compatible ``/v1/completions`` endpoint (vLLM) with
  ``max_tokens=1, temperature=0, logprobs=20``; the prediction is the letter with the highest
  log-probability among the returned top log-probs (tokens compared after stripping spaces, so
  ``"A"`` and ``" A"`` both count for A). When no letter is among them, the generated token is
  parsed instead; when that fails too, the prediction is ``None`` ("unparsed", counted wrong).

:func:`score_by_generation` is the generate-and-parse alternative (greedy, first standalone
A-D letter of the output). :func:`evaluate_utility` runs one of them over MMLU items, appends
every prediction to a cache ``<out_dir>/cache/utility-<key>.jsonl`` as it is made (the key: what
determines the predictions, :mod:`evaluation.identity`; so an interrupted run resumes where it
stopped, and another model never reuses it), and writes the summary
``<out_dir>/utility-mmlu-<label>.json``.

The question reaches the model in one of two prompt formats: ``raw`` (the MMLU text as it is,
ending with ``Answer:``: MMLU's usual zero-shot completion, for a model with a chat template) or
``plain`` (that text inside :func:`tools.prompt_format.plain_prompt`, the format training uses
for a model without a chat template, so a base model's adapter is scored on the prompt it was
trained on, as in the safety evaluation). The format is part of the cache key and the result.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from evaluation.data import MultipleChoice, subset
from evaluation.identity import (
    cache_file,
    cache_identity,
    cache_key,
    check_result_slot,
    claim_cache,
    model_identity,
    questions_hash,
    served_adapter_identity,
)
from evaluation.results import UtilityFormat, UtilityResult, result_filename
from tools.files import append_jsonl, read_jsonl
from tools.llm import Endpoint, EndpointError, batch_progress, map_concurrently, openai_client
from tools.prompt_format import plain_prompt

if TYPE_CHECKING:
    import openai
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
_LETTER_RE = re.compile(r"\b([A-D])\b")

OnResult = Callable[[int, "str | None"], None]
"""Called with (item index, predicted letter or None) as soon as a prediction is made."""


def parse_letter(text: str | None) -> str | None:
    """The first standalone A-D letter of a model output (``" B. 8"`` -> ``"B"``), else None."""
    if not text:
        return None
    match = _LETTER_RE.search(text)
    return match.group(1) if match else None


# -- transformers backend -----------------------------------------------------------------------


def letter_token_ids(tokenizer: PreTrainedTokenizerBase, context: str = "Answer:") -> list[int]:
    """Token ids of the answer letters as they follow a prompt ending with ``context``.

    The id of each letter is the first token in which ``context + " X"`` differs from
    ``context``: ``" A"`` for byte-level BPE tokenizers that keep it as one token, ``"▁A"`` for
    SentencePiece ones. If that does not give four different ids (a tokenizer that splits off
    the space), the first token of ``" X"`` and then of ``"X"`` are tried.
    """
    base = tokenizer.encode(context, add_special_tokens=False)
    candidates: list[list[int]] = []
    ids = []
    for letter in LETTERS:
        full = tokenizer.encode(f"{context} {letter}", add_special_tokens=False)
        k = next((i for i, (a, b) in enumerate(zip(base, full, strict=False)) if a != b),
                 min(len(base), len(full)))
        ids.append(full[k] if k < len(full) else -1)
    candidates.append(ids)
    for fmt in (" {}", "{}"):
        candidates.append([(tokenizer.encode(fmt.format(x), add_special_tokens=False) or [-1])[0]
                           for x in LETTERS])
    for ids in candidates:
        if -1 not in ids and len(set(ids)) == len(LETTERS):
            return ids
    raise ValueError(f"cannot find four distinct answer-letter tokens in {type(tokenizer)}")


def letter_token_variants(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Per letter, every single token that is that letter once spaces are stripped.

    The first is :func:`letter_token_ids`' token; then the first tokens of ``" X"`` and ``"X"``
    where they are the whole letter (``"A"`` beside ``" A"``). A letter's log-prob is the
    highest of its variants, as the endpoint backend takes it from the top log-probs.
    """
    primary = letter_token_ids(tokenizer)
    variants = []
    for letter, first in zip(LETTERS, primary, strict=True):
        ids = [first]
        for text in (f" {letter}", letter):
            tokens = tokenizer.encode(text, add_special_tokens=False)
            if (tokens and tokens[0] not in ids
                    and str(tokenizer.decode([tokens[0]])).strip() == letter):
                ids.append(tokens[0])
        variants.append(ids)
    return variants


def load_model(
    model: str | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None = None,
    adapter: str | None = None,
    device: str = "cpu",
) -> tuple[Any, PreTrainedTokenizerBase]:
    """A causal LM (in eval mode, on ``device``) and its tokenizer; a PEFT adapter on top.

    ``model`` is a loaded model, an HF id, a local path, or ``"default"`` (the embedded
    SmolLM2). The tokenizer, when not given, comes from the model's folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tools.default_model import resolve_model

    loaded: Any  # transformers' and peft's models share no stub type that has .to and .eval
    if isinstance(model, str):
        path = resolve_model(model)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        loaded = AutoModelForCausalLM.from_pretrained(
            path, dtype="float32" if device == "cpu" else "auto"
        )
    else:
        loaded = model
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(loaded.name_or_path)
    if adapter:
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(loaded, adapter)
    loaded.to(device)
    loaded.eval()
    return loaded, tokenizer


def _forward_kwargs(model: Any) -> set[str]:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def _batches(
    items: Sequence[MultipleChoice], tokenizer: Any, batch_size: int
) -> list[list[int]]:
    """Item indices grouped into batches of similar prompt length (less padding)."""
    lengths = [len(tokenizer.encode(it.prompt)) for it in items]
    order = sorted(range(len(items)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _encode_left_padded(tokenizer: Any, prompts: list[str], device: str) -> dict[str, Any]:
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    mask = enc["attention_mask"]
    # Left padding shifts the positions; give each row its own positions from 0, so that a
    # padded row scores exactly like the same prompt alone (and like vLLM).
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": mask.to(device),
            "position_ids": position_ids.to(device)}


def letter_logprobs_transformers(
    items: Sequence[MultipleChoice],
    model: str | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None = None,
    adapter: str | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    *,
    on_result: Callable[[int, list[float]], None] | None = None,
) -> list[list[float]]:
    """Next-token log-probabilities (over the whole vocabulary) of A, B, C, D for every item.

    Each letter's is the highest over its token variants (:func:`letter_token_variants`).
    """
    import torch

    if not items:
        return []
    lm, tokenizer = load_model(model, tokenizer, adapter, device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    variants = letter_token_variants(tokenizer)
    width = max(len(v) for v in variants)
    # (4, width) ids, short rows padded with their first id (max over a repeat is harmless)
    letter_ids = torch.tensor([v + [v[0]] * (width - len(v)) for v in variants])
    accepted = _forward_kwargs(lm)
    out: list[list[float]] = [[] for _ in items]
    with torch.inference_mode():
        for batch in _batches(items, tokenizer, max(1, batch_size)):
            enc = _encode_left_padded(tokenizer, [items[i].prompt for i in batch], device)
            if "position_ids" not in accepted:
                enc.pop("position_ids")
            if "logits_to_keep" in accepted:
                enc["logits_to_keep"] = 1
            logits = lm(**enc).logits[:, -1, :].float()
            logprobs = torch.log_softmax(logits, dim=-1)[:, letter_ids.to(logits.device)]
            logprobs = logprobs.amax(dim=-1)  # (batch, 4): best variant of each letter
            for row, i in enumerate(batch):
                out[i] = logprobs[row].tolist()
                if on_result:
                    on_result(i, out[i])
    return out


def score_with_transformers(
    items: Sequence[MultipleChoice],
    model: str | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None = None,
    adapter: str | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    *,
    on_result: OnResult | None = None,
) -> list[str]:
    """Predicted letters: the answer letter with the highest next-token log-prob, per item."""

    def best(logprobs: list[float]) -> str:
        return LETTERS[max(range(len(LETTERS)), key=logprobs.__getitem__)]

    hook = (lambda i, lp: on_result(i, best(lp))) if on_result else None
    scores = letter_logprobs_transformers(
        items, model, tokenizer, adapter, batch_size, device, on_result=hook
    )
    return [best(lp) for lp in scores]


def generate_with_transformers(
    items: Sequence[MultipleChoice],
    model: str | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None = None,
    adapter: str | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    max_tokens: int = 8,
    *,
    on_result: OnResult | None = None,
) -> list[str | None]:
    """Greedy generation with transformers, parsed like :func:`score_by_generation`."""
    import torch

    if not items:
        return []
    lm, tokenizer = load_model(model, tokenizer, adapter, device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    out: list[str | None] = [None] * len(items)
    with torch.inference_mode():
        for batch in _batches(items, tokenizer, max(1, batch_size)):
            enc = _encode_left_padded(tokenizer, [items[i].prompt for i in batch], device)
            enc.pop("position_ids")  # generate() derives them from the attention mask
            generated = lm.generate(
                **enc, max_new_tokens=max_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = generated[:, enc["input_ids"].shape[1] :]
            for row, i in enumerate(batch):
                out[i] = parse_letter(str(tokenizer.decode(new[row], skip_special_tokens=True)))
                if on_result:
                    on_result(i, out[i])
    return out


# -- endpoint backend ---------------------------------------------------------------------------


def letter_from_logprobs(top: dict[str, float] | None, generated: str | None) -> str | None:
    """The letter with the highest log-prob among ``top`` (tokens stripped of spaces).

    Falls back to the first standalone letter of ``generated``; None if neither has one.
    """
    best: dict[str, float] = {}
    for token, logprob in (top or {}).items():
        letter = token.strip()
        if letter in LETTERS and (letter not in best or logprob > best[letter]):
            best[letter] = logprob
    if best:
        return max(best, key=best.__getitem__)
    return parse_letter(generated)


Ask = Callable[["openai.OpenAI", MultipleChoice], "str | None"]
"""One item's request through a client: its predicted letter (or None)."""


def _ask_all(
    ask: Ask,
    items: Sequence[MultipleChoice],
    endpoint: Endpoint,
    max_concurrency: int,
    on_result: OnResult | None,
) -> list[str | None]:
    """``ask`` for every item, concurrently (:func:`tools.llm.map_concurrently`); a request that
    still fails after the client's retries raises :class:`EndpointError` naming the endpoint."""
    client = openai_client(endpoint)

    def one(item: MultipleChoice) -> str | None:
        try:
            return ask(client, item)
        except Exception as exc:  # a malformed answer too: the endpoint is what failed
            raise EndpointError("utility", endpoint, exc) from exc

    out: list[str | None] = [None] * len(items)
    try:
        for i, letter in map_concurrently(one, items, max_concurrency):
            out[i] = letter
            if on_result:
                on_result(i, letter)
    finally:
        client.close()
    return out


def score_with_endpoint(
    items: Sequence[MultipleChoice],
    endpoint: Endpoint,
    max_concurrency: int = 16,
    *,
    logprobs: int = 20,
    on_result: OnResult | None = None,
) -> list[str | None]:
    """Predicted letters from the top log-probs of one greedy token (``/v1/completions``)."""

    def one(client: openai.OpenAI, item: MultipleChoice) -> str | None:
        response = client.completions.create(
            model=endpoint.model, prompt=item.prompt, max_tokens=1, temperature=0,
            logprobs=logprobs,
        )
        choice = response.choices[0]
        lp = choice.logprobs
        top = lp.top_logprobs[0] if lp and lp.top_logprobs else None
        return letter_from_logprobs(top, choice.text)

    return _ask_all(one, items, endpoint, max_concurrency, on_result)


def score_by_generation(
    items: Sequence[MultipleChoice],
    endpoint: Endpoint,
    max_tokens: int = 8,
    *,
    max_concurrency: int = 16,
    on_result: OnResult | None = None,
) -> list[str | None]:
    """Predicted letters by greedy generation: the first standalone A-D letter of the output."""

    def one(client: openai.OpenAI, item: MultipleChoice) -> str | None:
        response = client.completions.create(
            model=endpoint.model, prompt=item.prompt, max_tokens=max_tokens, temperature=0
        )
        return parse_letter(response.choices[0].text)

    return _ask_all(one, items, endpoint, max_concurrency, on_result)


# -- evaluation ---------------------------------------------------------------------------------


def _read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """Predictions already in the JSONL file, by id (a torn last line is ignored)."""
    return {str(row["id"]): row for row in read_jsonl(path) if "id" in row and "predicted" in row}


def items_sha256(items: Sequence[MultipleChoice]) -> str:
    """The content hash of MMLU items (id, subject, prompt, answer), in order."""
    return questions_hash((it.id, it.subject, it.prompt, it.answer) for it in items)


def _loaded_model_identity(model: Any) -> dict[str, Any]:
    """A model passed as an object: its name and a hash of its weights (it may have been
    changed in memory since it was loaded, so its path does not identify it)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return {"name": str(getattr(model, "name_or_path", type(model).__name__)),
            "weights_sha256": digest.hexdigest()}


def formatted(items: Sequence[MultipleChoice],
              prompt_format: UtilityFormat) -> list[MultipleChoice]:
    """``items`` with their prompts as the model sees them in ``prompt_format``."""
    if prompt_format == "raw":
        return list(items)
    if prompt_format != "plain":
        raise ValueError(f"MMLU prompt format must be 'raw' or 'plain', got {prompt_format!r}")
    return [replace(it, prompt=plain_prompt(it.prompt)) for it in items]


def evaluate_utility(
    items: Sequence[MultipleChoice],
    *,
    backend: Literal["endpoint", "transformers"],
    method: Literal["loglik", "generate"] = "loglik",
    prompt_format: UtilityFormat = "raw",
    label: str,
    model: str | PreTrainedModel | None = None,
    adapter: str | None = None,
    endpoint: Endpoint | None = None,
    out_dir: str | Path,
    limit: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    max_concurrency: int = 16,
    max_tokens: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    dataset: str = "mmlu",
    serving: dict[str, Any] | None = None,
    target: str | None = None,
    iteration: int | None = None,
) -> dict[str, Any]:
    """MMLU accuracy of one model; writes the summary JSON and the predictions JSONL.

    ``backend="endpoint"`` needs ``endpoint`` (the served model name is ``endpoint.model``; a
    LoRA adapter is served by vLLM under its own name, ``adapter`` is then only recorded);
    ``model`` defaults to ``endpoint.model`` for the record. ``backend="transformers"`` loads
    ``model`` (HF id, path, ``"default"`` or a loaded model) and ``adapter`` (PEFT folder).

    Predictions go to ``<out_dir>/cache/utility-<key>.jsonl`` as they are made, the key a hash
    of what determines them (:mod:`evaluation.identity`: base model, adapter content, backend,
    method and its settings, the items' content), never the label; those already there are
    kept and not recomputed (unless ``overwrite``). The summary is
    ``<out_dir>/utility-<dataset>-<label>.json``; ``predictions_file`` is the JSONL's path
    relative to ``out_dir``. A label that already names another model there is refused.
    ``unparsed`` counts predictions that are None (no answer letter found); they count as
    wrong. ``prompt_format``: ``raw`` or ``plain`` (:func:`formatted`), recorded in
    ``settings``.
    """
    if backend not in ("endpoint", "transformers"):
        raise ValueError(f"unknown backend {backend!r}")
    if method not in ("loglik", "generate"):
        raise ValueError(f"unknown method {method!r}")
    if backend == "endpoint" and endpoint is None:
        raise ValueError("backend='endpoint' needs an endpoint")
    if backend == "transformers" and model is None:
        raise ValueError("backend='transformers' needs a model")
    if not label or "/" in label:
        raise ValueError(f"label must be a non-empty file-name part, not {label!r}")
    if len({it.id for it in items}) != len(items):
        raise ValueError("MMLU item ids are not unique")
    dataset_sha256 = items_sha256(items)
    items = formatted(subset(items, limit), prompt_format)
    if not items:
        raise ValueError("no MMLU items to evaluate")

    served = endpoint.model if endpoint is not None else "transformers"
    if model is None or isinstance(model, str):
        model_name = model or served  # no model: the endpoint's (checked on entry)
        identity = model_identity(model_name, adapter, served)
    else:
        identity = {"base": _loaded_model_identity(model),
                    "adapter": served_adapter_identity(adapter, served)}
        model_name = identity["base"]["name"]
    settings: dict[str, Any] = (
        {"max_tokens": max_tokens} if method == "generate"
        else {"logprobs": 20} if backend == "endpoint" else {"letter_variants": True})
    settings["prompt_format"] = prompt_format
    parts = {"cache": "utility", "model": cache_identity(identity, serving), "backend": backend,
             "method": method, "settings": settings, "data_sha256": dataset_sha256}
    key = cache_key(parts)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / result_filename("utility", dataset, label)
    check_result_slot(out, kind="utility", dataset=dataset, label=label, model=identity,
                      dataset_sha256=dataset_sha256)
    pred_path = cache_file(out, "utility", key)
    if overwrite:
        pred_path.unlink(missing_ok=True)
        summary_path.unlink(missing_ok=True)
    done = _read_predictions(pred_path)
    pred_path.parent.mkdir(parents=True, exist_ok=True)
    claim_cache(pred_path, parts, bool(done), "predictions")
    for item in items:
        row = done.get(item.id)
        if row is not None and row.get("answer") != item.answer:
            raise ValueError(f"{pred_path}: {item.id} has another gold answer; other data?")
    todo = [it for it in items if it.id not in done]

    if todo:
        with (
            append_jsonl(pred_path) as write,
            batch_progress(f"MMLU {label}", enabled=progress) as bar,
        ):
            task = bar.add_task("", total=len(items), completed=len(items) - len(todo))

            def record(i: int, letter: str | None) -> None:
                item = todo[i]
                row = {"id": item.id, "subject": item.subject, "answer": item.answer,
                       "predicted": letter}
                write(row)
                done[item.id] = row
                bar.advance(task)

            if backend == "endpoint":
                assert endpoint is not None  # refused on entry
                if method == "loglik":
                    score_with_endpoint(todo, endpoint, max_concurrency, on_result=record)
                else:
                    score_by_generation(todo, endpoint, max_tokens,
                                        max_concurrency=max_concurrency, on_result=record)
            else:
                assert model is not None  # refused on entry
                if method == "loglik":
                    score_with_transformers(todo, model, tokenizer, adapter, batch_size,
                                            device, on_result=record)
                else:
                    generate_with_transformers(todo, model, tokenizer, adapter, batch_size,
                                               device, max_tokens, on_result=record)

    predictions = [done[it.id]["predicted"] for it in items]
    per_subject: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for item, pred in zip(items, predictions, strict=True):
        per_subject[item.subject][0] += 1
        per_subject[item.subject][1] += int(pred == item.answer)
    correct = sum(c for _, c in per_subject.values())
    summary = UtilityResult(
        dataset=dataset,
        label=label,
        model=model_name,
        adapter=adapter,
        target=target,
        iteration=iteration,
        method=method,
        backend=backend,
        settings=settings,
        n=len(items),
        accuracy=correct / len(items),
        unparsed=sum(p is None for p in predictions),
        per_subject={
            s: {"n": n, "accuracy": c / n} for s, (n, c) in sorted(per_subject.items())
        },
        model_identity=identity,
        serving=serving if serving is not None else {"served_name": served},
        dataset_sha256=dataset_sha256,
        cache_key=key,
        predictions_file=pred_path.relative_to(out).as_posix(),
    )
    summary.write(out)
    return summary.to_dict()
