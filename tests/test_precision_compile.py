"""The `precision: bf16` and `train.compile: true` paths of the loop train on CPU (bf16 autocast; inductor,
which compiles C++ with the machine's compiler), and a compiled model's first steps give eager's losses."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from trainers.config import RunConfig, build_run_config
from trainers.loop import WorkerSession, run_training

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

BATCH = 16


def run_config(steps: int, regularizers: bool = True, **train: Any) -> RunConfig:
    return build_run_config({
        "model": {"family": "clip", "arch": "tiny-cnn"},
        "data": {"train_size": steps * BATCH, "eval_size": 64, "image_size": 32},
        "train": {"epochs": 1, "batch_size": BATCH, "lr": 5e-3, "warmup_steps": 2, "report_every_steps": 1,
                  **train},
        "regularizers": {"gc": 0.5, "bb": 0.1, "dfs": 0.5} if regularizers else {},
        "eval": {"tasks": ["structure"]},
    })  # fmt: skip


def step_losses(cfg: RunConfig) -> list[float]:
    """The loop's per-step total losses (its mid-epoch reports), trained on CPU without Ray."""
    reports: list[dict[str, Any]] = []
    session = WorkerSession(rank=0, world_size=1, device=torch.device("cpu"), prepare_model=lambda module: module,
                            report=lambda metrics, *args, **kwargs: reports.append(metrics),
                            get_checkpoint=lambda: None)
    run_training({"run": cfg.model_dump(mode="json")}, session)
    return [report["train/loss"] for report in reports if "train/samples_per_s" not in report]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_bf16_autocast_trains_on_cpu():
    steps = 24
    fp32 = step_losses(run_config(steps, precision="fp32"))
    bf16 = step_losses(run_config(steps, precision="bf16"))
    assert len(bf16) == steps and all(math.isfinite(loss) for loss in bf16)
    assert bf16[0] != fp32[0]  # bf16 really ran: its rounding shows in the first loss
    assert bf16[0] == pytest.approx(fp32[0], rel=0.05)  # ... and nothing else differs
    assert mean(bf16[-6:]) < mean(bf16[:6]) - 0.1  # it learns


def test_compiled_model_trains_and_its_first_losses_match_eager():
    """Regularizers off: inductor's C++ compilation of the whole step takes minutes on 2 loaded cores, and
    the regularizers' own tracing into one graph is tests/test_regularizers.py's."""
    steps = 6
    eager = step_losses(run_config(steps, regularizers=False, precision="fp32"))
    compiled = step_losses(run_config(steps, regularizers=False, precision="fp32", compile=True))
    assert len(compiled) == steps and all(math.isfinite(loss) for loss in compiled)
    # the same weights, data and views: inductor's fused kernels differ from eager's in round-off only
    assert compiled[:3] == pytest.approx(eager[:3], rel=1e-3)
    assert mean(compiled[-3:]) < mean(compiled[:3])
