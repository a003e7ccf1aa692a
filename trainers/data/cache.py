"""On-disk cache of rendered splits, keyed by a hash of everything that shapes the bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from trainers.storage import write_atomic

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "latent-modality-study"


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR


def cache_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def save_array(path: Path, array: np.ndarray) -> None:
    write_atomic(path, lambda stream: np.save(stream, array))


def save_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value))


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
