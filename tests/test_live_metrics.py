"""Trial metrics reach Ray's metrics agent: a real Tune run with the study's MetricsExport callback, then
the node's Prometheus endpoint is read until the gauges appear with the run's values."""

from __future__ import annotations

import time
import urllib.request

import pytest
import ray
from ray import tune

from study.live_metrics import TRIAL_EPOCH, TRIAL_METRIC, MetricsExport, exported_metrics


def test_exported_metrics_keep_the_runs_own_numbers_only():
    result = {"train/loss": 1.5, "val/zeroshot/top1": 0.25, "time_total_s": 3.0, "done": False,
              "training_iteration": 2, "config/regularizers.gc": 0.1, "trial_id": "abc", "done/flag": True}
    assert exported_metrics(result) == {"train/loss": 1.5, "val/zeroshot/top1": 0.25, "config/regularizers.gc": 0.1}


@pytest.fixture
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _read_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_each_trials_epoch_metrics_are_exported_as_ray_gauges(tmp_path, local_ray):
    def _two_epochs(config):  # defined here, so Ray ships it by value (workers cannot import tests/)
        for epoch in range(2):
            tune.report({"val/zeroshot/top1": config["x"] * (epoch + 1), "train/loss": 2.0 - epoch})

    tuner = tune.Tuner(
        _two_epochs,
        param_space={"x": tune.grid_search([0.125])},
        run_config=tune.RunConfig(name="metrics", storage_path=str(tmp_path), verbose=0,
                                  callbacks=[MetricsExport("demo_study")]),
    )
    (trial,) = tuner.fit()
    assert trial.metrics["val/zeroshot/top1"] == 0.25

    port = ray._private.worker.global_worker.node.metrics_export_port
    wanted = (f'ray_{TRIAL_METRIC}{{', 'metric="val/zeroshot/top1"', 'study="demo_study"', f"ray_{TRIAL_EPOCH}{{")
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:  # the driver exports every few seconds
        try:
            text = _read_metrics(port)
        except OSError:  # the metrics agent still starting
            text = ""
        if all(part in text for part in wanted):
            break
        time.sleep(1)
    lines = [line for line in text.splitlines() if line.startswith(f"ray_{TRIAL_METRIC}{{")]
    top1 = [line for line in lines if 'metric="val/zeroshot/top1"' in line]
    assert top1, f"no ray_{TRIAL_METRIC} for val/zeroshot/top1 in the metrics agent's export:\n{text[-2000:]}"
    assert float(top1[0].rsplit(" ", 1)[1]) == 0.25  # the last epoch's value
    epoch = [line for line in text.splitlines() if line.startswith(f"ray_{TRIAL_EPOCH}{{")]
    assert epoch and float(epoch[0].rsplit(" ", 1)[1]) == 2
