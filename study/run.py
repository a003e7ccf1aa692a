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
import shlex
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from analysis import provenance
from study.console import StudyInterrupt
from trainers.config import ConfigError, flatten, get_dotted
from trainers.storage import (
    OPTUNA_FILE,
    STUDY_FILE,
    TRAIN_DIR,
    TRIALS_DIR,
    absolute_location,
    is_uri,
    local_path,
    write_atomic,
)
from trainers.study_spec import StudySpec, is_block_param, load_study, selection_metric
from trainers.train import CHECKPOINTS_KEPT, check_data, init_ray

MIN_FREE_BYTES = 200 * 2**20


class StudyError(ValueError):
    """A problem with the study's input or its results directory: one line, exit code 2."""


# --------------------------------------------------------------------------- results directory


def check_results_dir(results: str, resume: bool) -> None:
    """Writable, with room, and not someone else's study: checked before anything starts."""
    if is_uri(results):
        return  # remote storage: pyarrow reports its own errors when Tune first writes
    path = local_path(results)
    existing = path / STUDY_FILE
    if existing.exists() and not resume:
        raise StudyError(f"{path}: already holds a study; pass --resume to continue it, or choose --results")
    if resume and not (path / TRIALS_DIR).is_dir():
        raise StudyError(f"{path}: no study to resume here ({path / TRIALS_DIR} is missing)")
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


MAX_PLAN_LINES = 12


def trial_plan(spec: StudySpec) -> list[str]:
    """What `--dry-run` lists as the study's trials: each grid configuration, or the baseline and the
    Optuna samples, each times the seeds."""
    search = spec.search
    seeds = f"× {len(search.seeds)} seed(s) {search.seeds}"
    if search.method == "grid":
        import itertools

        from trainers.study_spec import grid_values

        axes = {key: grid_values(param) for key, param in search.space.items()}
        cells = list(itertools.product(*axes.values()))
        lines = [f"trials: {len(cells)} configuration(s) {seeds}:"]
        lines += ["  " + ", ".join(f"{key} = {value}" for key, value in zip(axes, cell, strict=True))
                  for cell in cells[:MAX_PLAN_LINES]]
        if len(cells) > MAX_PLAN_LINES:
            lines.append(f"  ... and {len(cells) - MAX_PLAN_LINES} more")
        return lines
    base = spec.base.model_dump()
    baseline = ", ".join(f"{key} = {get_dotted(base, key)}" for key in search.space)
    return [f"trials: {spec.num_trials()} =",
            f"  the baseline ({baseline or 'the base configuration'}: the base values of the searched keys, which a "
            f"log-scale search cannot reach; run first, outside Optuna's sampler, for the tables to compare against) "
            f"{seeds}",
            f"  + {search.num_samples} Optuna suggestion(s) over {', '.join(search.space)} {seeds}"]


# --------------------------------------------------------------------------- Tune


def optuna_url(results: str) -> str | None:
    """The SQLAlchemy URL of a local study's Optuna storage (absolute: it works from any directory)."""
    return None if is_uri(results) else f"sqlite:///{local_path(results) / OPTUNA_FILE}"


def named_trial_actor(trainable: Any) -> type:
    """Tune's class for a function trainable, with the dashboard name of its actor: Tune's own
    (`ImplicitFunc`, repr `run_trial`) says nothing of the trial, this one is `StudyTrial` with the
    repr `trial_<id> <key>=<value> ...` (`study.search.trial_label`), which Ray records when the actor
    starts and shows in the dashboard's actor list and in front of the actor's log lines. Tune still
    registers it as `run_trial` (its `_name`), so `--resume` finds the experiment's trainable."""
    from ray.tune.trainable.function_trainable import wrap_function  # Tune's DeveloperAPI

    from study.search import trial_label

    class StudyTrial(wrap_function(trainable)):
        def __repr__(self) -> str:
            return trial_label(self.trial_id, self.config)

    StudyTrial.__qualname__ = StudyTrial.__name__  # the dashboard's class name, without `named_trial_actor.<locals>.`
    return StudyTrial


def build_tuner(spec: StudySpec, results: str, resume: bool):
    import ray
    from ray import tune

    from study.console import StudyProgress, StudyReporter
    from study.live_metrics import MetricsExport
    from study.result_log import ResultLog
    from study.search import build_tune_config
    from study.trial import run_trial

    storage = absolute_location(results)
    trainable = tune.with_parameters(
        run_trial, study=spec.to_yaml_dict(), train_storage=f"{storage.rstrip('/')}/{TRAIN_DIR}"
    )
    trainable = named_trial_actor(tune.with_resources(trainable, trial_process_resources(spec)))
    experiment = f"{storage.rstrip('/')}/{TRIALS_DIR}"
    if resume:
        return tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False)

    concurrency = max_concurrent_trials(spec, ray.cluster_resources())
    tune_config, param_space = build_tune_config(spec, optuna_url(results), concurrency)
    parameter_columns = progress_table_columns(spec)
    # selection runs on the validation metric; the test metric beside it is what the report shows
    selected_on = selection_metric(spec.search.metric)
    reporter = StudyReporter(
        experiment,
        # training_iteration counts a trial's reports, one per epoch: the epoch, 1-based
        metric_columns={"training_iteration": "epoch", selected_on: selected_on,
                        spec.search.metric: spec.search.metric, "train/loss": "loss"},
        parameter_columns=parameter_columns + ["train.seed"],
        max_report_frequency=30,
    )
    in_trial = spec.base.resources.trains_in_trial_process()
    run_config = tune.RunConfig(
        name=TRIALS_DIR,
        storage_path=storage,
        progress_reporter=reporter,
        # a worker group's failures are Ray Train's to retry; an in-process trial's are Tune's
        failure_config=tune.FailureConfig(max_failures=spec.base.train.max_failures if in_trial else 0),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        callbacks=[StudyProgress(spec.num_trials(), spec.base.train.epochs, selected_on), MetricsExport(spec.name),
                   ResultLog()],  # every epoch once in result.json, across trial restarts
        verbose=1,
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def progress_table_columns(spec: StudySpec) -> list[str]:
    """The searched keys as Tune's table names them: it joins a nested config's keys with "/" and keeps a
    dotted key whole (a block's regularizers/gc, an arm's arm/data.info_gap)."""
    columns: list[str] = []
    for key, param in spec.search.space.items():
        if is_block_param(key, param):
            columns += [f"{key}/{path}" for value in param.values for path in flatten(value, separator="/")]
        else:
            columns.append(key)
    return list(dict.fromkeys(columns))


def finished_trials(grid: Any, epochs: int) -> int:
    """Trials that trained every epoch (one report per epoch) without an error."""
    return sum(1 for result in grid
               if result.error is None and (result.metrics or {}).get("training_iteration", 0) >= epochs)


def resume_command(argv: list[str], results: str) -> str:
    """The command line that resumes this study: the same study file and --set, with --results and --resume."""
    args = list(argv)
    if not any(arg == "--results" or arg.startswith("--results=") for arg in args):
        args += ["--results", results]
    args = [arg for arg in args if arg not in ("--resume", "--no-report")]
    return "python -m study.run " + shlex.join([*args, "--resume"])


def finish_report(spec: StudySpec, results: str, interrupted: str | None) -> list[str]:
    """Write the report (marked partial when interrupted) and return the end-of-run lines: the best
    configuration with its values, its metric against the baseline, the verdict, and the report's path."""
    from analysis.report import write_report_and_answer

    report, answer = write_report_and_answer(local_path(results), interrupted=interrupted)
    return [*answer.lines(), f"report: {report}"]


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
            print("\n".join(f"# {line}" for line in trial_plan(spec)))  # YAML comments: the output stays YAML
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

    argv = sys.argv[1:] if argv is None else argv
    if not is_uri(results):
        if not args.resume:
            write_atomic(local_path(results) / STUDY_FILE, yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False))
        provenance.record_run(local_path(results), ["python", "-m", "study.run", *argv])
    print(describe(spec), flush=True)

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's table reporter, with our columns
    # epochs without evaluation (eval.every_epoch: false) report no search metric; that is expected
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    interrupt = StudyInterrupt()
    try:
        with interrupt.shielding_ray():
            init_ray(args.address)
        interrupt.install()  # after ray.init, which installs a SIGTERM handler of its own
        if (url := optuna_url(results)) and spec.search.method == "optuna":
            print(f"Optuna dashboard: optuna-dashboard {url}", flush=True)
        tuner = build_tuner(spec, results, args.resume)
        interrupt.tuning = True
        grid = tuner.fit()
        interrupt.tuning = False
    except KeyboardInterrupt:  # before the Tune loop started, or a second signal: nothing more is written
        print(interrupted_line(None, spec.num_trials(), argv, results), file=sys.stderr, flush=True)
        return interrupt.exit_code
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: study failed: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    failed = sum(1 for result in grid if result.error is not None)
    finished = finished_trials(grid, spec.base.train.epochs)
    stopped = interrupted_line(finished, spec.num_trials(), argv, results) if interrupt.interrupted else None
    if not stopped:
        print(f"{len(grid)} trials, {failed} failed", flush=True)
    if not args.no_report and not is_uri(results):
        try:
            for line in finish_report(spec, results, stopped):
                print(line, flush=True)
        except KeyboardInterrupt:
            print("report: not written (interrupted)", file=sys.stderr, flush=True)
            return interrupt.exit_code
    if (url := optuna_url(results)) and spec.search.method == "optuna":
        print(f"Optuna dashboard: optuna-dashboard {url}", flush=True)
    if stopped:
        print(stopped, flush=True)
        return interrupt.exit_code
    # 0 only when every trial finished; the report above lists a failed trial with its reason
    return 1 if failed else 0


def interrupted_line(finished: int | None, total: int, argv: list[str], results: str) -> str:
    done = "" if finished is None else f" {finished} of {total} trials finished"
    return f"interrupted:{done} — resume with: {resume_command(argv, results)}"


def exit_now(code: int) -> None:
    """Shut Ray down and exit without the interpreter's finalization, which waits several more seconds on
    Ray's native threads (measured: 7 s after `ray.shutdown()` for a one-trial Tune run) with nothing left
    to save: the study's files are written and flushed, Tune's experiment state included."""
    import logging

    import ray

    if ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
