"""Training-state checkpoints: one directory per epoch, readable with `torch.load(weights_only=True)`.

Layout: `state.pt` (module, optimizer, scheduler, epoch, step; written by rank 0),
`rng-rank{R}.pt` (each rank's RNG states), `config.json` (the resolved RunConfig, so a
checkpoint alone says what produced it). Ray Train merges the ranks' directories into one.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from trainers.config import ConfigError, RunConfig

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
FORMAT = "latent-modality-study/1"


def save_training_state(
    directory: Path, cfg: RunConfig, rank: int, state: dict[str, Any] | None, rng: dict[str, Any]
) -> None:
    if state is not None:
        torch.save({"format": FORMAT, "family": cfg.model.family, **state}, directory / STATE_FILE)
        (directory / CONFIG_FILE).write_text(cfg.model_dump_json(indent=2))
    torch.save(rng, directory / f"rng-rank{rank}.pt")


def read_checkpoint(directory: Path) -> tuple[dict[str, Any], RunConfig]:
    """Load a checkpoint directory; anything unreadable or foreign is a ValueError naming the file."""
    state_path, config_path = directory / STATE_FILE, directory / CONFIG_FILE
    for path in (state_path, config_path):
        if not path.is_file():
            raise ValueError(f"{path}: missing; {directory} is not a checkpoint of this project")
    try:
        # weights_only: tensors and plain metadata only, never arbitrary pickled objects
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"{state_path}: unreadable checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{state_path}: not a checkpoint of this project (format {state.get('format')!r})"
                         if isinstance(state, dict) else f"{state_path}: not a checkpoint of this project")
    try:
        cfg = RunConfig.model_validate(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ConfigError(f"{config_path}: invalid configuration ({str(exc).splitlines()[0]})") from None
    return state, cfg


def load_training_state(directory: Path, cfg: RunConfig, rank: int) -> dict[str, Any]:
    state, saved = read_checkpoint(directory)
    if (saved.model.family, saved.model.architecture()) != (cfg.model.family, cfg.model.architecture()):
        raise ValueError(
            f"{directory}: checkpoint of {saved.model.family}/{saved.model.architecture()}, "
            f"but this run is {cfg.model.family}/{cfg.model.architecture()}"
        )
    rng_path = directory / f"rng-rank{rank}.pt"
    if rng_path.is_file():
        state["rng"] = torch.load(rng_path, weights_only=True)
    return state
