"""Two gloo processes with batch b give the loss and (DDP-averaged) gradients of one process with batch 2b."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from trainers.config import RegularizerConfig
from trainers.family import total_loss
from trainers.regularizers import LatentStructureLoss

WORLD_SIZE = 2
LOCAL_BATCH = 6
INPUT_DIM, EMBED_DIM = 5, 8  # global batch 12 > 8: the D x D Gram path; the unit tests cover both
# every term on, with in-modal contrastive terms and a fixed bridge time so runs are comparable
ALL_TERMS = RegularizerConfig(gc=0.5, bb=1.0, dfs=0.3, align=0.2, inmodal=True, bb_s=0.3)


class LinearTowers(nn.Module):
    """Shared and independent linear heads for both modalities, and a learned logit scale."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(INPUT_DIM, EMBED_DIM) for name in ("image", "text", "image_ind", "text_ind")}
        ).double()
        self.log_scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, loss: LatentStructureLoss, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        def embed(head: str, inputs: str) -> torch.Tensor:
            return F.normalize(self.heads[head](batch[inputs]), dim=1)

        return loss(
            embed("image", "image"),
            embed("text", "text"),
            self.log_scale.exp(),
            image_aug=embed("image", "image_aug"),
            text_aug=embed("text", "text_aug"),
            image_independent=embed("image_ind", "image"),
            text_independent=embed("text_ind", "text"),
            image_independent_aug=embed("image_ind", "image_aug"),
            text_independent_aug=embed("text_ind", "text_aug"),
        )


def global_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    names = ("image", "text", "image_aug", "text_aug")
    return {
        name: torch.randn(WORLD_SIZE * LOCAL_BATCH, INPUT_DIM, generator=generator, dtype=torch.float64)
        for name in names
    }


def loss_and_gradients(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    towers = LinearTowers()
    losses = towers(LatentStructureLoss(ALL_TERMS), batch)
    total_loss(losses).backward()
    gradients = {name: p.grad for name, p in towers.named_parameters()}
    return {key: value.detach() for key, value in losses.items()}, gradients


def _worker(rank: int, rendezvous: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two ranks share two cores
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD_SIZE)
    try:
        shard = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        local = {name: x[shard] for name, x in global_batch().items()}
        losses, gradients = loss_and_gradients(local)
        for grad in gradients.values():  # what DDP does to every parameter gradient
            dist.all_reduce(grad)
            grad /= WORLD_SIZE
        # per-sample bridge times are drawn per rank and gathered with the features: same loss everywhere
        torch.manual_seed(100 + rank)
        ranged = RegularizerConfig(bb=1.0, bb_s_range=(0.1, 0.6))
        bridge = total_loss(LinearTowers()(LatentStructureLoss(ranged, contrastive=False), local)).detach()
        torch.save({"losses": losses, "gradients": gradients, "bridge": bridge}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_on_the_concatenated_batch(tmp_path):
    # spawn, not fork: by now the test process may hold threads (Ray's gRPC, OpenMP) that a forked
    # child would inherit half-locked
    mp.start_processes(
        _worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD_SIZE, start_method="spawn"
    )
    expected_losses, expected_gradients = loss_and_gradients(global_batch())
    assert set(expected_losses) == {"contrastive_loss", "inmodal_loss", "align_loss", "gc_loss", "bb_loss", "dfs_loss"}
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    for result in results:
        for key, value in expected_losses.items():
            torch.testing.assert_close(result["losses"][key], value, rtol=1e-10, atol=1e-12, msg=key)
        for name, grad in expected_gradients.items():
            torch.testing.assert_close(result["gradients"][name], grad, rtol=1e-9, atol=1e-12, msg=name)
    torch.testing.assert_close(results[0]["bridge"], results[1]["bridge"], rtol=0, atol=0)
