"""Content hashes: canonical JSON, files, and LoRA adapter folders.

One definition of each, shared by the evaluation caches (:mod:`evaluation.identity`) and the
merged copies of adapters (:mod:`tools.adapter_serving`), so both name a model by its content:

- :func:`canonical_hash`: SHA-256 of a value as canonical JSON;
- :func:`file_sha256`: SHA-256 of a file (computed once per path, size and modification time);
- :func:`adapter_sha256`: SHA-256 of a LoRA adapter's config and weights (not its path: a
  retrained adapter is another model, a copy is the same one).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def canonical_hash(value: Any) -> str:
    """SHA-256 (hex) of ``value`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # keyed by size and mtime too, so a file rewritten in place is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content (computed once per path, size and modification time)."""
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def adapter_sha256(adapter: str | Path) -> str:
    """SHA-256 over a LoRA adapter folder's config and weights files.

    Raises ValueError for a folder that is not an adapter (no ``adapter_config.json`` or no
    weights), naming the ``adapter/`` subfolder that `train` writes when that is the mistake.
    """
    folder = Path(adapter)
    if not folder.is_dir():
        raise ValueError(f"adapter folder {folder} does not exist")
    if not (folder / ADAPTER_CONFIG).is_file():
        hint = (f"; did you mean {folder / 'adapter'}?"
                if (folder / "adapter" / ADAPTER_CONFIG).is_file() else "")
        raise ValueError(f"{folder} is not a LoRA adapter folder (no {ADAPTER_CONFIG}){hint}")
    weights = [folder / name for name in ADAPTER_WEIGHTS if (folder / name).is_file()]
    if not weights:
        raise ValueError(f"{folder} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    return canonical_hash({p.name: file_sha256(p) for p in [folder / ADAPTER_CONFIG, *weights]})
