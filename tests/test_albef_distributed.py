"""Under torch.distributed, ALBEF's queue enqueues every worker's momentum features (2 processes, gloo)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainers.albef.queue import FeatureQueue


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        queue = FeatureQueue(size=5, dim=2)
        for step in range(2):
            # rank r's batch at step s: rows 100 * s + 10 * r + (0, 1)
            local = 100.0 * step + 10.0 * rank + torch.arange(4.0).reshape(2, 2)
            queue.enqueue(local)
        results[rank] = (queue.features.clone(), int(queue.pointer))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_queue_enqueues_all_gathered_features():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), results), nprocs=2, join=True)
        results = dict(results)
    step0 = torch.cat([torch.arange(4.0).reshape(2, 2), 10 + torch.arange(4.0).reshape(2, 2)])  # ranks 0, 1
    step1 = 100 + step0
    # 4 rows per step into 5 slots: step 0 fills 0..3, step 1 fills 4 then wraps to 0..2
    expected = torch.cat([step1[1:4], step0[3:4], step1[0:1]])
    for rank in (0, 1):
        features, pointer = results[rank]
        torch.testing.assert_close(features, expected)
        assert pointer == 3
