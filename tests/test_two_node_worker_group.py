"""One trial's Ray Train worker group spread over Ray nodes, as a multi-GPU trial on a cluster runs:
local clusters of 1-CPU nodes (storage shared in the test's directory) run a study whose one trial has
2 workers, with all three regularizers on. The workers land on different nodes, the trial's first
global-batch loss equals what one worker computes on the same data, and when a worker's node dies the
trial resumes from its checkpoint on a node that joins, with every epoch reported once."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from conftest import SEARCH_SPACES, epoch_rows, result_rows, study_command, trial_dirs

from trainers.loop import WorkerSession, run_training
from trainers.study_spec import load_study

pytestmark = pytest.mark.slow

WORKERS = 2
BATCH = 32  # per worker
# tiny-vit: LayerNorm only, so no statistic depends on how the global batch is split among workers
OVERRIDES = [
    "base.model.arch=tiny-vit",
    "base.regularizers.gc=0.5", "base.regularizers.bb=0.2", "base.regularizers.dfs=0.5",
    "base.train.report_every_steps=1",
    f"base.train.batch_size={BATCH}",
    "base.train.epochs=1",
    f"base.resources.num_workers={WORKERS}",
    "base.resources.in_trial_process=false",
]  # fmt: skip


def one_trial_study(tmp_path: Path) -> Path:
    tree = yaml.safe_load((SEARCH_SPACES / "gc.yaml").read_text())
    tree["name"] = "two_nodes"
    tree["search"] = {"method": "grid", "metric": "zeroshot/synthetic_shapes/top1", "mode": "max", "seeds": [0],
                      "space": {"regularizers.gc": {"type": "grid", "values": [0.5]}}}
    path = tmp_path / "two_nodes.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def train_workers_by_node() -> dict[int, int]:
    """{RayTrainWorker pid: its raylet's pid} for this test's cluster (its nodes are this process's children)."""
    workers = {}
    for process in psutil.Process().children(recursive=True):
        try:
            if any("RayTrainWorker" in part for part in process.cmdline()):
                workers[process.pid] = process.ppid()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    # a worker's forked children (DataLoader workers) carry its process title too
    return {pid: parent for pid, parent in workers.items() if parent not in workers}


def first_loss_of_one_worker(space: Path, overrides: list[str]) -> float:
    """The same trial's configuration on one worker with the global batch, trained in this process."""
    spec = load_study(space, overrides + [f"base.train.batch_size={WORKERS * BATCH}", "base.resources.num_workers=1"])
    cfg = spec.trial_run_config({"regularizers.gc": 0.5, "train.seed": 0})
    reports = []
    session = WorkerSession(rank=0, world_size=1, device=torch.device("cpu"), prepare_model=lambda module: module,
                            report=lambda metrics, *args, **kwargs: reports.append(metrics),
                            get_checkpoint=lambda: None)
    run_training({"run": cfg.model_dump(mode="json")}, session)
    return reports[0]["train/loss"]


def test_a_trials_workers_on_two_nodes_compute_the_global_batch_loss(tmp_path: Path, start_study):
    from ray.cluster_utils import Cluster

    space = one_trial_study(tmp_path)
    results = tmp_path / "results"
    command = study_command(space, results, overrides=OVERRIDES)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    placements: dict[int, int] = {}
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        study = start_study([*command, "--address", cluster.address])
        while study.proc.poll() is None:
            placements |= train_workers_by_node()
            time.sleep(0.2)
        assert study.wait(10) == 0, study.output()[-3000:]
    finally:
        cluster.shutdown()
    assert len(placements) == WORKERS, placements
    assert len(set(placements.values())) == WORKERS  # each worker a child of a different node's raylet

    (trial,) = trial_dirs(results)
    steps = [row for row in result_rows(trial) if "train/samples_per_s" not in row]
    expected = first_loss_of_one_worker(space, [part for part in command if part.startswith("base.")])
    assert steps[0]["train/loss"] == pytest.approx(expected, rel=1e-4)
    assert (results / "report" / "report.html").is_file()


def raylet_pid(node) -> int:
    return next(process.pid for kind, process in node.live_processes() if kind == "raylet")


def children_named(parent: int, title: str) -> list[int]:
    return [process.pid for process in psutil.Process(parent).children()
            if any(title in part for part in process.cmdline())]


def test_a_trial_whose_worker_node_dies_resumes_from_its_checkpoint_on_another_node(tmp_path: Path, start_study):
    """After epoch 0's checkpoint, the node that holds one of the two workers (and neither the trial nor
    Ray Train's controller, which Ray places where it likes) is killed and a fresh node joins: the worker
    group restarts there from the checkpoint in the shared storage, and every epoch is in the trial's
    results once. The head (GCS, the study's driver) has no CPU, so the workers are on the two others."""
    from ray.cluster_utils import Cluster

    space = one_trial_study(tmp_path)
    results = tmp_path / "results"
    command = study_command(space, results, overrides=[*OVERRIDES, "base.train.epochs=2",
                                                       "base.train.report_every_steps=null"])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    raylets_with_workers: set[int] = set()
    killed = False
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(WORKERS)]
        cluster.wait_for_nodes()
        study = start_study([*command, "--address", cluster.address])
        while study.proc.poll() is None:
            raylets_with_workers |= set(train_workers_by_node().values())
            if not killed and list(results.glob("train/trial_*/checkpoint_epoch_0000")):
                doomed = next(node for node in nodes if children_named(raylet_pid(node), "RayTrainWorker")
                              and not children_named(raylet_pid(node), "StudyTrial")
                              and not children_named(raylet_pid(node), "TrainController"))
                cluster.remove_node(doomed, allow_graceful=False)
                cluster.add_node(num_cpus=1)
                killed = True
            time.sleep(0.2)
        assert study.wait(10) == 0, study.output()[-3000:]
    finally:
        cluster.shutdown()
    assert killed
    assert len(raylets_with_workers) == 3  # the two first nodes, and the one that replaced the killed one
    (trial,) = trial_dirs(results)
    assert epoch_rows(trial) == [0, 1]
    assert list(results.glob(f"train/{trial.name}/checkpoint_epoch_0001"))
