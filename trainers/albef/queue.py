"""ALBEF's feature queue: a FIFO of momentum features, filled from all data-parallel workers."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every worker's `tensor` concatenated along dim 0 (no gradient; ALBEF's concat_all_gather)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


class FeatureQueue(nn.Module):
    """`size` L2-normalized features of dimension `dim`, oldest overwritten first.

    Buffers, so they travel with the state dict (a resumed run keeps its queue). Unlike ALBEF,
    the size need not be a multiple of the batch: the write position wraps around.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor) -> None:
        features = concat_all_gather(features.detach()).to(self.features.dtype)
        count = features.shape[0]
        # a batch larger than the queue keeps its newest rows, in the slots they would have reached
        skipped = max(0, count - self.size)
        slots = (self.pointer + skipped + torch.arange(count - skipped, device=self.features.device)) % self.size
        self.features[slots] = features[skipped:]
        self.pointer.copy_((self.pointer + count) % self.size)
