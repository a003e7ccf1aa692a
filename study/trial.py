"""One Tune trial = one training run, in one of two ways.

A 1-worker trial (the laptop default) runs the training loop in the trial's own process: no Ray
Train controller and no worker group are started (Ray forbids Ray Train's local mode inside a Tune
trial, so the loop is called directly), and the trial actor is reused by the next trial with its
imports and task sets warm. The loop reports straight to Tune, so the checkpoints are
Tune's (`trials/<trial>/checkpoint_*`): Tune restarts a failed trial from its latest, and
`Tuner.restore` resumes an interrupted one from it.

A trial with N workers drives a worker group, Ray Train V2's pattern: `TuneReportCallback`
forwards every epoch's report to Tune. Its Train run is named after the Tune trial id, which
survives `Tuner.restore`: a restarted trial finds its own Train run in storage (`train/`) and
resumes it from the last checkpoint, so no epoch is trained twice. Tune restarts such a trial
from scratch (it holds no Tune checkpoint) and so starts its result.json afresh; every report is
therefore also kept beside the Train run (`reports/`), and a restarted trial replays those to
Tune before its Train run resumes: each epoch is in result.json exactly once.
"""

from __future__ import annotations

import json
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from study.search import trial_name
from trainers.config import RunConfig
from trainers.data.images import InputDataError
from trainers.loop import NonFiniteLossError
from trainers.storage import EMBEDDINGS_FILE, REPORTS_DIR, filesystem_of, write_atomic
from trainers.study_spec import StudySpec, trial_params
from trainers.train import build_torch_trainer, fit_run

# A trial stopped by a failure that a retry would meet again leaves its reason here, so that Tune's
# retries of it fail at once: the failure and its marker file.
STOPPED_MARKERS: dict[type[Exception], str] = {
    NonFiniteLossError: "nonfinite_loss.txt",
    InputDataError: "bad_input.txt",
}


def _reports_dir(train_storage: str, run_name: str):
    filesystem, root = filesystem_of(train_storage)
    return filesystem, f"{root.rstrip('/')}/{run_name}/{REPORTS_DIR}"


def read_reports(train_storage: str, run_name: str) -> list[dict[str, Any]]:
    """Every report this trial's Train run has made so far, in order (one JSON file each)."""
    import pyarrow.fs

    filesystem, directory = _reports_dir(train_storage, run_name)
    if filesystem.get_file_info(directory).type != pyarrow.fs.FileType.Directory:
        return []
    files = sorted(info.path for info in filesystem.get_file_info(pyarrow.fs.FileSelector(directory))
                   if info.path.endswith(".json"))
    reports = []
    for path in files:
        with filesystem.open_input_stream(path) as stream:
            reports.append(json.loads(stream.read()))
    return reports


def report_log(train_storage: str, run_name: str, num_existing: int):
    """A callback on Ray Train's controller that keeps every report (rank 0's metrics) in storage."""
    from ray.train import UserCallback

    class ReportLog(UserCallback):
        def __init__(self):
            self.next_index = num_existing

        def after_report(self, run_context, metrics, checkpoint):
            filesystem, directory = _reports_dir(train_storage, run_name)
            # written whole, then renamed: a kill never leaves a half report to replay
            write_atomic(f"{directory}/{self.next_index:06d}.json", json.dumps(metrics[0]), filesystem)
            self.next_index += 1

    return ReportLog()


def run_trial(config: dict[str, Any], study: dict[str, Any], train_storage: str) -> None:
    """Tune function trainable; `study` is the resolved study (validated again here, on the worker)."""
    spec = StudySpec.model_validate(study)
    params = trial_params(config)  # train.seed included: a grid axis, or SeededRepeater's per repeat
    cfg = spec.trial_run_config(params)
    context = tune.get_context()
    filesystem, trial_dir = trial_directory()
    for error, marker_name in STOPPED_MARKERS.items():
        if (reason := _read_text(filesystem, f"{trial_dir}/{marker_name}")) is not None:
            raise error(reason)  # Tune restarted a trial that would stop the same way again
    try:
        if cfg.resources.trains_in_trial_process():
            checkpoint = _train_in_trial_process(cfg)
        else:
            checkpoint = _train_on_worker_group(cfg, train_storage, trial_name(context.get_trial_id()))
    except (NonFiniteLossError, InputDataError) as exc:
        reason = exc.reason if isinstance(exc, InputDataError) else str(exc)
        write_atomic(f"{trial_dir}/{STOPPED_MARKERS[type(exc)]}", reason, filesystem)
        raise
    if checkpoint is not None:
        import pyarrow.fs

        source = f"{checkpoint.path}/{EMBEDDINGS_FILE}"
        if checkpoint.filesystem.get_file_info(source).type == pyarrow.fs.FileType.File:
            with checkpoint.filesystem.open_input_stream(source) as stream:
                write_atomic(f"{trial_dir}/{EMBEDDINGS_FILE}", stream.read(), filesystem)


def trial_directory():
    """(filesystem, path) of this trial's directory in the study's storage (`<results>/trials/<trial>`),
    where the analysis reads it. Not `tune.get_context().get_trial_dir()`: that is a local staging
    directory, and a trial run by a reused actor stages in a working directory that Tune never uploads."""
    from ray.train._internal.session import get_storage  # Ray's DeveloperAPI for the configured storage

    storage = get_storage()
    return storage.storage_filesystem, storage.trial_fs_path


def _read_text(filesystem, path: str) -> str | None:
    import pyarrow.fs

    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode()


def _train_in_trial_process(cfg: RunConfig) -> Any:
    import torch

    from trainers.loop import run_training, tune_trial_session

    torch.set_num_threads(max(1, round(cfg.resources.cpus_per_worker)))  # a reused actor keeps the last value
    run_training({"run": cfg.model_dump(mode="json")}, tune_trial_session())
    return tune.get_checkpoint()  # the last checkpoint this trial reported


def _train_on_worker_group(cfg: RunConfig, train_storage: str, run_name: str) -> Any:
    previous = read_reports(train_storage, run_name)
    for metrics in previous:  # a restarted trial: Tune's result.json starts afresh, the Train run does not
        tune.report(metrics)
    callbacks = [report_log(train_storage, run_name, len(previous)), TuneReportCallback()]
    return fit_run(build_torch_trainer(cfg, train_storage, run_name, callbacks=callbacks)).checkpoint
