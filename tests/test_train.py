"""The shared Ray Train loop, for real: TorchTrainer on CPU workers (gloo), checkpoints, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from trainers.config import RunConfig, build_run_config

pytestmark = pytest.mark.slow

TINY = {
    "model": {"family": "clip", "arch": "tiny-vit"},
    "data": {"train_size": 512, "eval_size": 128, "info_gap": 0.5},
    "train": {"epochs": 2, "batch_size": 64, "lr": 1e-3, "warmup_steps": 2, "max_failures": 1},
    "regularizers": {"gc": 0.5},
    "eval": {"tasks": ["zeroshot", "retrieval", "linear_probe", "structure"]},
}


def tiny_config(**sections) -> RunConfig:
    tree = json.loads(json.dumps(TINY))
    for key, value in sections.items():
        tree.setdefault(key, {}).update(value)
    return build_run_config(tree)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def fit(cfg: RunConfig, storage: Path, name: str):
    from trainers.train import build_torch_trainer

    return build_torch_trainer(cfg, str(storage), name).fit()


def train_worker_pids() -> list[int]:
    return [
        p.pid for p in psutil.process_iter(["cmdline"])
        if any("RayTrainWorker" in part for part in (p.info["cmdline"] or []))
    ]


def test_two_workers_train_and_report(ray_cluster, tmp_path):
    cfg = tiny_config(resources={"num_workers": 2}, train={"epochs": 1})
    result = fit(cfg, tmp_path, "two-workers")
    assert result.error is None
    metrics = result.metrics
    assert metrics["epoch"] == 0
    # drop_last sampling: each of the 2 workers takes 512 / 2 / 64 = 4 batches
    assert metrics["step"] == 4
    assert math.isfinite(metrics["train/loss"]) and metrics["train/gc_loss"] > 0
    assert result.checkpoint is not None
    files = set(os.listdir(result.checkpoint.path))
    assert {"state.pt", "config.json", "rng-rank0.pt", "rng-rank1.pt"} <= files


def test_resume_after_sigkill_matches_uninterrupted_run(ray_cluster, tmp_path):
    cfg = tiny_config(data={"train_size": 1024})
    reference = fit(cfg, tmp_path, "uninterrupted").metrics

    # Kill the worker with SIGKILL once the first epoch's checkpoint exists (mid second epoch).
    run_dir = tmp_path / "killed"
    killed: list[int] = []

    def killer():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            if any(run_dir.rglob("checkpoint_epoch_0000/state.pt")):
                for pid in train_worker_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)

    thread = threading.Thread(target=killer)
    thread.start()
    resumed = fit(cfg, tmp_path, "killed")
    thread.join()
    assert killed, "the worker was never killed"
    assert resumed.error is None
    assert resumed.metrics["epoch"] == reference["epoch"] == 1
    assert resumed.metrics["step"] == reference["step"]
    for key in ("train/loss", "zeroshot/synthetic_shapes/top1", "val/retrieval/mean_recall", "structure/modality_gap"):
        assert resumed.metrics[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-5), key


def test_short_run_is_above_chance(ray_cluster, tmp_path):
    """The default study's model and settings (search_spaces/gc.yaml) after two short epochs."""
    cfg = tiny_config(
        model={"arch": "tiny-cnn"}, data={"train_size": 4096, "eval_size": 256},
        train={"epochs": 2, "batch_size": 32, "lr": 5e-3, "warmup_steps": 20}, regularizers={"gc": 0.0},
        eval={"every_epoch": False},
    )
    metrics = fit(cfg, tmp_path, "chance").metrics
    from trainers.data import build_task_sets

    tasks = build_task_sets(cfg.data)
    chance = {task.name: 1 / len(task.classnames) for task in tasks.zeroshot}
    assert metrics["zeroshot/synthetic_colours/top1"] > 2 * chance["synthetic_colours"]
    mean_top1 = sum(metrics[f"zeroshot/{name}/top1"] for name in chance) / len(chance)
    assert mean_top1 > 1.5 * sum(chance.values()) / len(chance)
    num_images = len(tasks.retrieval.images)
    # R@10 by chance: 10 of the images for t2i; any of an image's 2 captions among 10 of 2N for i2t
    assert metrics["retrieval/t2i_r10"] > 2 * 10 / num_images
    assert metrics["retrieval/i2t_r10"] > 2 * 10 / num_images
    assert metrics["linear_probe/image_only/image"] > 1.5 / 8  # the colour probe


def test_nonfinite_loss_stops_with_step_and_term(tmp_path):
    """A learning rate that blows the model up: the command names the step and the loss term."""
    config = tmp_path / "run.yaml"
    tree = json.loads(json.dumps(TINY))
    tree["train"] |= {"lr": 1e12, "epochs": 1, "grad_clip_norm": None, "warmup_steps": 0}
    tree["name"] = "explode"
    import yaml

    config.write_text(yaml.safe_dump(tree))
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.train", str(config), "--storage", str(tmp_path / "runs"), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "non-finite loss at step" in proc.stderr
    assert "_loss" in proc.stderr


def test_bad_config_exits_2_without_ray(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("train: {epochs: 0, batchsize: 3}\n")
    # `python -m trainers.train`, then report whether Ray was ever imported: a configuration error stops the
    # command before it imports Ray, let alone starts a cluster
    run_then_report_ray = (
        "import runpy, sys\n"
        "try:\n"
        "    runpy.run_module('trainers.train', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    print('ray imported' if 'ray' in sys.modules else 'ray not imported')\n"
    )
    proc = subprocess.run([sys.executable, "-c", run_then_report_ray, str(config)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "train.epochs" in proc.stderr and "train.batchsize: unknown key" in proc.stderr
    assert proc.stdout.strip() == "ray not imported"
