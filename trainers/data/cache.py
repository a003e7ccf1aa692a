"""On-disk cache of rendered splits, keyed by a hash of everything that shapes the bytes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "latent-modality-study"


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR


def cache_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def _atomic_write(path: Path, write) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_array(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda handle: np.save(handle, array))


def save_json(path: Path, value: Any) -> None:
    _atomic_write(path, lambda handle: handle.write(json.dumps(value).encode()))


def load_array(path: Path) -> np.ndarray | None:
    """Memory-mapped, so DataLoader workers share the pages instead of copying the split."""
    try:
        return np.load(path, mmap_mode="r")
    except (FileNotFoundError, ValueError, OSError):
        return None


def load_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
