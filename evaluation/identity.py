"""What determines an evaluation's responses, judgments and predictions: the keys of their caches.

A cache of model outputs is only valid for the model, prompt format, generation settings and
data that made it, so every cache file is named by a hash of exactly those (:func:`cache_key`):

- the **base model**: its HF id or path as given (the embedded default under its name), plus,
  when it is a local folder, the SHA-256 of its ``config.json``;
- the **adapter**: the SHA-256 of its ``adapter_config.json`` and weights files (its content,
  not its path: a retrained adapter is another model, a copy is the same one);
- the **prompt format** and the **generation settings** (max tokens, temperature, stop strings);
- the **data set**: the SHA-256 of its questions (id, prompt, category), :func:`questions_hash`;
- for judgments, also the **judge** (:func:`judge_identity`: name, judge model, prompt version).

A label is only a display name. One label names one model in a results folder
(:func:`check_result_slot` refuses a second), and one data set name names one data set.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import openai

from evaluation.results import DiversityResult, ResultKind, read_results, slug
from tools.files import write_json
from tools.hashing import adapter_sha256, canonical_hash, file_sha256
from tools.llm import Endpoint, EndpointError, openai_client

# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def base_identity(model: str) -> dict[str, Any]:
    """The base model: ``{"name", "config_sha256"}`` (the hash only for a local folder).

    The embedded default model has one name whether it is given by name or by its cached
    folder, so results of the vLLM and transformers backends compare.
    """
    from tools.default_model import DEFAULT_MODEL_NAME, cache_dir, is_default_model

    default_folder = cache_dir() / "models" / DEFAULT_MODEL_NAME
    folder = Path(model)
    if is_default_model(model) or (
        folder.is_dir() and folder.resolve() == default_folder.resolve()
    ):
        model, folder = DEFAULT_MODEL_NAME, default_folder
    config = folder / "config.json"
    if folder.is_dir() and model != DEFAULT_MODEL_NAME:
        model = str(folder.resolve())
    return {"name": model, "config_sha256": file_sha256(config) if config.is_file() else None}


def adapter_identity(adapter: str | Path) -> dict[str, Any]:
    """A LoRA adapter folder's content: ``{"sha256"}`` over its config and weights files
    (:func:`tools.hashing.adapter_sha256`; ValueError for a folder that is not an adapter)."""
    return {"sha256": adapter_sha256(adapter)}


def served_adapter_identity(adapter: str | Path | None, served_name: str) -> dict[str, Any] | None:
    """The adapter part of :func:`model_identity`: its content when the folder is on this
    machine, else (served by a remote server only) its path and served name; None without one.
    """
    if adapter is None:
        return None
    if Path(adapter).exists():
        return adapter_identity(adapter)
    return {"sha256": None, "path": str(adapter), "served_name": served_name}


def model_identity(model: str, adapter: str | Path | None, served_name: str) -> dict[str, Any]:
    """``{"base", "adapter"}`` of the model under evaluation (:func:`base_identity`,
    :func:`served_adapter_identity`)."""
    return {"base": base_identity(model), "adapter": served_adapter_identity(adapter, served_name)}


def cache_identity(identity: Mapping[str, Any],
                   serving: Mapping[str, Any] | None) -> dict[str, Any]:
    """``identity`` as the output caches key it: an adapter served as a merged copy
    (``serving["adapter_served_as"] == "merged"``, :mod:`tools.adapter_serving`) answers like
    the LoRA-served one up to rounding, not bit for bit, so its caches are its own. The result
    slot (one label, one model) is the same for both ways."""
    adapter = identity.get("adapter")
    if (serving or {}).get("adapter_served_as") != "merged" or not isinstance(adapter, dict):
        return dict(identity)
    return {**identity, "adapter": {**adapter, "served_as": "merged"}}


def default_label(adapter: str | Path | None) -> str:
    """``base``, or the adapter folder's name (its parent's when it is called ``adapter``, as
    the folder `train` writes: ``adapters/da1/adapter`` -> ``da1``)."""
    if adapter is None:
        return "base"
    path = Path(adapter).resolve()
    return path.parent.name if path.name == "adapter" and path.parent.name else path.name


# --------------------------------------------------------------------------------------------
# Data, judges, keys
# --------------------------------------------------------------------------------------------


def questions_hash(rows: Iterable[Sequence[Any]]) -> str:
    """SHA-256 of a data set's rows (tuples such as (id, prompt, category)), in order."""
    return canonical_hash([list(row) for row in rows])


def judge_identity(judge: Any) -> dict[str, Any]:
    """A judge's identity: its own ``identity`` when it has one, else name and description."""
    identity = getattr(judge, "identity", None)
    if isinstance(identity, Mapping):
        return dict(identity)
    return {"name": judge.name, "description": getattr(judge, "description", "")}


def cache_key(parts: Mapping[str, Any]) -> str:
    """The cache key of ``parts`` (model, settings, data[, judge]): a SHA-256 hex digest."""
    return canonical_hash(dict(parts))


def cache_file(out_dir: Path, kind: str, key: str) -> Path:
    """``<out_dir>/cache/<kind>-<first 16 hex digits of key>.jsonl``."""
    return Path(out_dir) / "cache" / f"{kind}-{key[:16]}.jsonl"


def claim_cache(out_file: Path, parts: Mapping[str, Any], has_rows: bool, what: str) -> None:
    """Write ``<out_file>.meta.json`` (the key's ``parts``); if ``out_file`` already holds rows
    made with other parts (a file copied or renamed by hand), raise instead of mixing them."""
    parts = json.loads(json.dumps(parts))  # as it reads back (tuples become lists)
    meta_file = out_file.with_name(out_file.name + ".meta.json")
    if has_rows and meta_file.exists():
        old = json.loads(meta_file.read_text("utf-8"))
        if old != parts:
            raise ValueError(
                f"{out_file} holds {what} generated with {old}, not {parts}; "
                "use another label or out_dir, or delete the file"
            )
    write_json(meta_file, parts)


# --------------------------------------------------------------------------------------------
# Result files: one label, one model; one name, one data set
# --------------------------------------------------------------------------------------------


def describe_model(identity: Mapping[str, Any]) -> str:
    """``base + adapter <hash>`` in a few words, for messages."""
    base = (identity.get("base") or {}).get("name", "?")
    adapter = identity.get("adapter")
    if not adapter:
        return str(base)
    return f"{base} + adapter {(adapter.get('sha256') or adapter.get('path') or '?')[:12]}"


def check_result_slot(
    out_dir: Path,
    *,
    kind: ResultKind,
    dataset: str,
    label: str,
    model: Mapping[str, Any],
    dataset_sha256: str,
) -> None:
    """Refuse to write a result that would mix two models under one label, or two data sets
    under one name, in ``out_dir``.

    ``model`` is the result's ``model_identity``; two results compare on the keys both have
    (utility has no prompt format). Two data set names that map to one file name
    (:func:`evaluation.results.slug`) are one name.
    """
    results, _ = read_results(Path(out_dir))  # a file that is no result takes no slot
    for path, old in results.items():
        if isinstance(old, DiversityResult):
            continue
        old_model = old.model_identity
        if old.label == label and isinstance(old_model, dict):
            common = set(old_model) & set(model)
            if any(old_model[k] != model[k] for k in common):
                raise ValueError(
                    f"label {label!r} already names model {describe_model(old_model)} "
                    f"(prompt format {old_model.get('prompt_format', '-')}) in {path}, not "
                    f"{describe_model(model)} (prompt format {model.get('prompt_format', '-')})"
                    "; pick another --label"
                )
        same_name = old.kind == kind and slug(str(old.dataset)) == slug(dataset)
        if same_name and old.dataset_sha256 not in (None, dataset_sha256):
            raise ValueError(
                f"data set name {dataset!r} already names other data in {path}; "
                "pick another --name"
            )


# --------------------------------------------------------------------------------------------
# Served models
# --------------------------------------------------------------------------------------------


def served_models(endpoint: Endpoint) -> dict[str, str | None]:
    """The model ids a server lists at ``/v1/models``, each with its ``root`` (what vLLM
    loaded it from: an HF id or path; None where the server does not say)."""
    client = openai_client(endpoint)
    try:
        return {m.id: getattr(m, "root", None) for m in client.models.list()}
    except openai.OpenAIError as exc:
        raise EndpointError("target", endpoint, exc) from exc
    finally:
        client.close()


def served_base(endpoint: Endpoint, base: str, adapter_name: str | None = None) -> str:
    """What identifies the base model a server serves as ``base``, from one ``/v1/models``
    listing: the ``root`` it lists (two servers that loaded the same weights under other names
    share caches; two that serve other weights under one name do not), else the name itself.

    With ``adapter_name``, a :class:`ValueError` unless the server lists it (a request to a
    name it does not serve would not reach the adapter).
    """
    try:
        listed = served_models(endpoint)
    except EndpointError:
        if adapter_name is not None:
            raise
        return base  # the evaluation's first request will say what is wrong with the server
    if adapter_name is not None and adapter_name not in listed:
        raise ValueError(
            f"{endpoint.base_url} does not serve the adapter {adapter_name!r} (it serves: "
            f"{', '.join(sorted(listed)) or 'nothing'}); give the name it serves it under"
        )
    root = listed.get(base)
    return str(root) if root else base
