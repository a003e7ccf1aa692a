"""`python -m study.run SPACE.yaml [--set k=v ...] [--address auto|ADDR] [--resume] [--dry-run] [--results DIR]`

Runs a study: Ray Tune (Optuna or a grid, seeds as repeated trials) over Ray Train trials, then
writes the ablation report. Optuna, ASHA and the progress table select on the validation counterpart
of the study's `search.metric` (val/<metric>); the report shows the plain (test) metric.
Everything the study produces lives in the results directory:

    study.yaml   the resolved study          optuna.db   Optuna's RDB storage (optuna studies)
    trials/      Tune's experiment           train/      each trial's Ray Train run and checkpoints
    report/      the ablation report
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml
from ray.tune.search import Repeater
from ray.tune.search.repeater import TRIAL_INDEX

from analysis.files import write_atomic
from study.spec import StudySpec, load_study, searched_keys, selection_metric
from trainers.config import ConfigError
from trainers.train import CHECKPOINTS_KEPT, check_data, init_ray

EXPERIMENT = "trials"
STUDY_FILE = "study.yaml"
OPTUNA_FILE = "optuna.db"
MIN_FREE_BYTES = 200 * 2**20


class StudyError(ValueError):
    """A problem with the study's input or its results directory: one line, exit code 2."""


# --------------------------------------------------------------------------- results directory


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> Path:
    return Path(path.removeprefix("file://")).expanduser().resolve()


def check_results_dir(results: str, resume: bool) -> None:
    """Writable, with room, and not someone else's study: checked before anything starts."""
    if is_uri(results):
        return  # remote storage: pyarrow reports its own errors when Tune first writes
    path = local_path(results)
    existing = path / STUDY_FILE
    if existing.exists() and not resume:
        raise StudyError(f"{path}: already holds a study; pass --resume to continue it, or choose --results")
    if resume and not (path / EXPERIMENT).is_dir():
        raise StudyError(f"{path}: no study to resume here ({path / EXPERIMENT} is missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise StudyError(f"{path}: results directory is not writable ({exc.strerror})") from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise StudyError(f"{path}: only {free // 2**20} MiB free; a study needs at least {MIN_FREE_BYTES // 2**20}")


# --------------------------------------------------------------------------- resources


def trial_resources(spec: StudySpec) -> dict[str, float]:
    resources = spec.base.resources
    demand = {"CPU": resources.num_workers * resources.cpus_per_worker}
    if resources.use_gpu:
        demand["GPU"] = float(resources.num_workers)
    return demand


def trial_process_resources(spec: StudySpec) -> dict[str, float]:
    """A trial that trains in its own process holds its worker's resources; one that drives a worker
    group holds almost nothing (the workers hold the CPUs and GPUs)."""
    if spec.base.resources.trains_in_trial_process():
        return trial_resources(spec)
    return {"CPU": 0, "memory": 64 * 2**20}


def max_concurrent_trials(spec: StudySpec, cluster: dict[str, float]) -> int:
    """As many trials as the cluster holds at once, so no trial waits forever for its workers."""
    fits = [math.floor(cluster.get(kind, 0.0) / amount) for kind, amount in trial_resources(spec).items() if amount]
    limit = max(1, min(fits)) if fits else 1
    if spec.search.max_concurrent_trials:
        limit = min(limit, spec.search.max_concurrent_trials)
    return min(limit, spec.num_trials())


def describe(spec: StudySpec) -> str:
    demand = ", ".join(f"{v:g} {k}" for k, v in trial_resources(spec).items())
    return (
        f"study {spec.name}: {spec.num_trials()} trials ({spec.search.method}, "
        f"{len(spec.search.seeds)} seed(s)); each trial: {spec.base.resources.num_workers} worker(s), {demand}"
    )


# --------------------------------------------------------------------------- Tune


class SeededRepeater(Repeater):
    """Repeats each Optuna suggestion once per seed and writes the seed into the trial config,
    so every trial's params.json says which seed it ran; Optuna sees the mean over seeds.

    The first configuration is the baseline (the base values of the searched keys, e.g. every
    weight 0), run once per seed outside Optuna: a log-scale weight can never reach 0, and an
    ablation table needs the baseline to compare against.
    """

    def __init__(self, searcher: Any, seeds: list[int], baseline: dict[str, Any]) -> None:
        super().__init__(searcher, repeat=len(seeds), set_index=True)
        self.seeds = list(seeds)
        self.baseline = dict(baseline)
        self.baseline_trials: list[str] = []

    def suggest(self, trial_id: str) -> dict | None:
        if len(self.baseline_trials) < len(self.seeds):
            index = len(self.baseline_trials)
            self.baseline_trials.append(trial_id)
            return {**self.baseline, TRIAL_INDEX: index, "train.seed": self.seeds[index]}
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            config["train.seed"] = self.seeds[config[TRIAL_INDEX]]
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs: Any) -> None:
        if trial_id not in self.baseline_trials:
            super().on_trial_complete(trial_id, result, **kwargs)


def build_tune_config(spec: StudySpec, results: str, concurrency: int):
    from ray import tune

    search = spec.search
    scheduler = None
    if search.scheduler.type == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=selection_metric(search.metric),
            mode=search.mode,
            max_t=search.scheduler.max_t or spec.base.train.epochs,
            grace_period=search.scheduler.grace_period,
            reduction_factor=search.scheduler.reduction_factor,
        )
    if search.method == "grid":
        from study.search import grid_param_space

        return tune.TuneConfig(
            num_samples=1, scheduler=scheduler, max_concurrent_trials=concurrency, reuse_actors=True,
            trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_dirname,
        ), grid_param_space(search.space, search.seeds)

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from study.search import optuna_define_by_run

    storage = None if is_uri(results) else optuna.storages.RDBStorage(f"sqlite:///{local_path(results) / OPTUNA_FILE}")
    searcher = OptunaSearch(
        space=optuna_define_by_run(search.space),
        metric=selection_metric(search.metric),
        mode=search.mode,
        study_name=spec.name,
        storage=storage,
        seed=spec.base.train.seed,
    )
    base = spec.base.model_dump()
    baseline = {key: _dotted_value(base, key) for key in search.space}
    return tune.TuneConfig(
        search_alg=SeededRepeater(searcher, search.seeds, baseline),
        scheduler=scheduler,
        num_samples=spec.num_trials(),
        max_concurrent_trials=concurrency,
        reuse_actors=True,  # the next trial finds torch, open_clip and the task sets already loaded
        trial_dirname_creator=_trial_dirname,
        trial_name_creator=_trial_dirname,
    ), {}


def _dotted_value(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(spec: StudySpec, results: str, resume: bool):
    import ray
    from ray import tune

    from study.trial import run_trial

    storage = results if is_uri(results) else str(local_path(results))
    trainable = tune.with_parameters(
        run_trial, study=spec.to_yaml_dict(), train_storage=f"{storage.rstrip('/')}/train"
    )
    trainable = tune.with_resources(trainable, trial_process_resources(spec))
    experiment = f"{storage.rstrip('/')}/{EXPERIMENT}"
    if resume:
        return tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False)

    concurrency = max_concurrent_trials(spec, ray.cluster_resources())
    tune_config, param_space = build_tune_config(spec, results, concurrency)
    # Tune's table flattens a nested config with "/": a block parameter's keys are regularizers/gc, ...
    parameter_columns = [key if key in spec.search.space else key.replace(".", "/", 1)
                         for key in searched_keys(spec.search.space)]
    # selection runs on the validation metric; the test metric beside it is what the report shows
    selected_on = selection_metric(spec.search.metric)
    reporter = tune.CLIReporter(
        metric_columns={"epoch": "epoch", selected_on: selected_on, spec.search.metric: spec.search.metric,
                        "train/loss": "loss"},
        parameter_columns=parameter_columns + ["train.seed"],
        max_report_frequency=30,
    )
    in_trial = spec.base.resources.trains_in_trial_process()
    run_config = tune.RunConfig(
        name=EXPERIMENT,
        storage_path=storage,
        progress_reporter=reporter,
        # a worker group's failures are Ray Train's to retry; an in-process trial's are Tune's
        failure_config=tune.FailureConfig(max_failures=spec.base.train.max_failures if in_trial else 0),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        verbose=1,
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


# --------------------------------------------------------------------------- main


def resolve_study(args: argparse.Namespace) -> tuple[StudySpec, str]:
    spec = load_study(args.space, args.overrides)
    results = args.results or str(Path("results") / spec.name)
    if args.resume and not is_uri(results) and (local_path(results) / STUDY_FILE).is_file():
        saved = load_study(local_path(results) / STUDY_FILE)
        if saved.to_yaml_dict() != spec.to_yaml_dict():
            raise StudyError(
                f"{args.space}: differs from the study being resumed in {results}; resume with the same file and --set"
            )
    return spec, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    parser.add_argument("space", help="study YAML (search_spaces/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any key of the study file, e.g. base.train.epochs=2")
    parser.add_argument("--address", default=None, help="join a Ray cluster (auto or HOST:PORT); default: local Ray")
    parser.add_argument("--results", default=None, help="results directory or URI (default: results/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved study and its trials, then exit")
    parser.add_argument("--no-report", action="store_true", help="skip the ablation report at the end")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

    try:
        spec, results = resolve_study(args)
        if args.dry_run:
            print(yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False).rstrip())
            print(describe(spec))
            return 0
        check_results_dir(results, args.resume)
        check_data(spec.base)
    except (ConfigError, StudyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # the data the base configuration names (check_data): file and row, or key
        message = str(exc)
        print(f"error: {'base.' + message if message.startswith('data.') else message}", file=sys.stderr)
        return 2

    if not is_uri(results) and not args.resume:
        write_atomic(local_path(results) / STUDY_FILE, yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False))
    print(describe(spec), flush=True)

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's table reporter, with our columns
    # epochs without evaluation (eval.every_epoch: false) report no search metric; that is expected
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    init_ray(args.address)
    try:
        tuner = build_tuner(spec, results, args.resume)
        grid = tuner.fit()
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: study failed: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    failed = sum(1 for result in grid if result.error is not None)
    print(f"{len(grid)} trials, {failed} failed", flush=True)
    if not args.no_report and not is_uri(results):
        from analysis.report import write_report

        report = write_report(local_path(results))
        print(f"report: {report}")
    # 0 only when every trial finished; the report above lists a failed trial with its reason
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
