"""What the one shared training loop needs from a model family (CLIP, ALBEF).

The loop (trainers/loop.py) never asks which family it runs: it builds a `Family` from the
registry, trains its `TrainingModule` on its data set, and calls its `evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from trainers.config import RunConfig

Batch = dict[str, torch.Tensor]


class TrainingModule(nn.Module):
    """A model plus its losses. `forward(batch)` returns `(losses, metrics)`:

    losses: named scalar tensors; every key ending in `_loss` is a weighted term and the
        training objective is their sum (open_clip's convention), so each term is logged.
    metrics: floats or scalar tensors for logging (logit scale, accuracies, ...); tensors are
        averaged on the device, so returning them costs no host sync per step.
    """

    # Every name `forward` may return (a term only when its weight is on), declared by each family beside its
    # forward; the loop logs them as train/<name>, and tests/test_metric_names.py checks the declarations.
    loss_names: tuple[str, ...] = ()
    metric_names: tuple[str, ...] = ()

    def forward(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, float | torch.Tensor]]:
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Work that follows each optimizer step (logit-scale clamp, momentum update)."""

    def tower_of(self, parameter_name: str) -> Literal["image", "text"] | None:
        """Which tower a parameter belongs to (for `train.image_tower_lr_scale` / `text_tower_lr_scale`), or None."""
        return None


def total_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(value for key, value in losses.items() if key.endswith("_loss"))


@dataclass(frozen=True)
class Family:
    build_module: Callable[[RunConfig], TrainingModule]
    build_train_dataset: Callable[[RunConfig], Dataset]
    # turns a list of data set items into a Batch (tokenization, normalization)
    build_collate: Callable[[RunConfig], Callable[[list[Any]], Batch]]
    # downstream evaluation of a trained module: {"zeroshot/<set>/top1": ..., "val/zeroshot/<set>/top1": ..., ...}
    evaluate: Callable[[TrainingModule, RunConfig, torch.device], dict[str, float]]
    # image/text embeddings of evaluation pairs ({"image", "text", "labels"} arrays) for the
    # report's PCA view; saved as embeddings.npz in the last checkpoint
    embedding_sample: Callable[[TrainingModule, RunConfig, torch.device], dict[str, Any]] | None = None


def get_family(name: str) -> Family:
    if name == "clip":
        from trainers.clip import CLIP_FAMILY

        return CLIP_FAMILY
    if name == "albef":
        from trainers.albef.family import ALBEF_FAMILY

        return ALBEF_FAMILY
    raise ValueError(f"model.family: unknown family {name!r} (expected clip or albef)")
