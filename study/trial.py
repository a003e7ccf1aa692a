"""One Tune trial = one Ray Train run (Ray Train V2's pattern: the trial calls `TorchTrainer.fit()`
with a `TuneReportCallback`, which forwards every epoch's report to Tune).

The Train run is named after the Tune trial id, which survives `Tuner.restore`: a restarted
trial finds its own Train run in storage and resumes it from the last checkpoint, so no epoch
is trained or reported twice.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from study.search import seed_for_trial, trial_params
from study.spec import StudySpec
from trainers.loop import NonFiniteLossError
from trainers.train import build_torch_trainer, nonfinite_failure

EMBEDDINGS_FILE = "embeddings.npz"


def train_run_name(trial_id: str) -> str:
    return f"trial_{trial_id}"


def run_trial(config: dict[str, Any], study: dict[str, Any], train_storage: str) -> None:
    """Tune function trainable; `study` is the resolved study (validated again here, on the worker)."""
    spec = StudySpec.model_validate(study)
    params = trial_params(config) | {"train.seed": seed_for_trial(config, spec.search.seeds)}
    cfg = spec.trial_run_config(params)
    context = tune.get_context()
    run_name = train_run_name(context.get_trial_id())
    trainer = build_torch_trainer(cfg, train_storage, run_name, callbacks=[TuneReportCallback()])
    result = trainer.fit()
    failure = nonfinite_failure(train_storage, run_name)
    if failure:
        raise NonFiniteLossError(failure)
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as directory:
            source = Path(directory) / EMBEDDINGS_FILE
            if source.is_file():
                shutil.copyfile(source, Path(context.get_trial_dir()) / EMBEDDINGS_FILE)
