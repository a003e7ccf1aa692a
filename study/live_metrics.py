"""Every trial's per-epoch metrics as Ray custom metrics, for the dashboard's Metrics view.

Ray exports `ray.util.metrics` gauges through each node's metrics agent in Prometheus format; the
dashboard charts them once Prometheus and Grafana are running (README, "Watching a study"). The
gauges are set on the driver, where Tune hands every trial's result to its callbacks, so 1-worker
trials (which report from their own process) and worker-group trials (which report through Ray
Train) are exported the same way.
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.util.metrics import Gauge

# Prometheus names: Ray prefixes them with "ray_"
TRIAL_METRIC = "latent_study_trial_metric"
TRIAL_EPOCH = "latent_study_trial_epoch"
STUDY_TRIALS_FINISHED = "latent_study_trials_finished"


def exported_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The result's own metrics (`train/loss`, `val/zeroshot/...`), not Tune's bookkeeping (`time_total_s`)."""
    return {key: float(value) for key, value in result.items()
            if "/" in key and isinstance(value, int | float) and not isinstance(value, bool)}


class MetricsExport(tune.Callback):
    """Sets one gauge per (study, trial, metric) at each report, the trial's epoch, and the finished-trial count."""

    def __init__(self, study_name: str) -> None:
        self.study_name = study_name
        self.metric = Gauge(TRIAL_METRIC, "a trial's latest value of one metric", ("study", "trial", "metric"))
        self.epoch = Gauge(TRIAL_EPOCH, "a trial's last completed epoch (1-based)", ("study", "trial"))
        self.finished = Gauge(STUDY_TRIALS_FINISHED, "trials of the study that have finished", ("study",))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tags = {"study": self.study_name, "trial": str(trial)}
        for name, value in exported_metrics(result).items():
            self.metric.set(value, {**tags, "metric": name})
        self.epoch.set(int(result.get("training_iteration", 0)), tags)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from ray.tune.experiment import Trial

        done = sum(1 for t in trials if t.status == Trial.TERMINATED or t is trial)
        self.finished.set(done, {"study": self.study_name})
