"""Ray's overhead in a study: seconds per trial from trial start to its first training step and
from its last report to trial end, and their share of the study's wall time.

    python bench/study_overhead.py                          # the default study, search_spaces/gc.yaml
    python bench/study_overhead.py --set base.train.epochs=2 --set base.data.train_size=1024 \\
        --set search.num_samples=2                          # a reduced study
    python bench/study_overhead.py --results results/gc     # only read a finished study's files

Method (all times are absolute wall-clock seconds; nothing is added to the training loop):
  trial start      Tune's own `start_time` of the trial (trials/experiment_state-*.json).
  report k         the trainable's start (Tune's `last_result_time` - the last row's `time_total_s`)
                   + row k's `time_total_s` (trials/<trial>/result.json: one row per epoch).
  training time k  epoch k's samples / its `train/samples_per_s` (the loop's own epoch timer), with
                   samples = optimizer steps of the epoch x grad_accum_steps x batch_size x num_workers.
  epoch work w     evaluation + checkpoint + report after each epoch: the median over epochs k >= 1 of
                   (report k - report k-1) - training time k. (One epoch only: w = 0, which counts
                   the first evaluation as overhead.)
  first step       report 0 - w - training time 0.   start overhead = first step - trial start
                   (trial process, imports, TorchTrainer controller, worker group, model and data set
                   construction: everything before the first batch). "(to trainer" is its first
                   part: until the trial's TorchTrainer starts (Ray Train's storage marker file);
                   "-" for a 1-worker trial, which trains in its own (reused) trial process. There
                   the start overhead is within the method's error and can read slightly negative.
  trial end        the newest file of the trial in Tune's local staging directory (the "Result
                   logdir" study.run's output names, under /tmp/ray/session_*): Tune closes the
                   trial's event file when the trial completes. (The copies under --results are
                   all re-synced when the study ends, so their times say nothing.) Without the
                   staging directory the end is unknown and counted as the last report.
                   end overhead = trial end - last report (Train shutdown, artifact copy).
The study's share: the driver's time before the first trial starts and after the last one ends
(Ray start-up and shut-down; the ablation report is timed separately and not counted), plus
any gaps between trials, plus the time trials run times their overhead fraction
(sum of overheads / sum of trial durations), over the study's wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET_SHARE = 0.15
# lines study.run prints, used as timestamps of the driver's phases
FIT_DONE_MARK = " trials, "  # "N trials, M failed"
REPORT_MARK = "report: "
STAGING_MARK = "Result logdir: "
# Ray Train writes this into its run directory when a TorchTrainer starts
TRAIN_STORAGE_MARKER = ".validate_storage_marker"


@dataclass(frozen=True)
class TrialTiming:
    trial_id: str
    start: float
    trainer_start: float | None  # the trial's TorchTrainer began (its Train run's storage marker)
    first_step: float
    last_report: float
    end: float
    training_s: float  # sum of epoch training times
    epoch_work_s: float  # per-epoch evaluation + checkpoint + report

    @property
    def start_overhead(self) -> float:
        return self.first_step - self.start

    @property
    def before_trainer(self) -> float | None:
        return None if self.trainer_start is None else self.trainer_start - self.start

    @property
    def end_overhead(self) -> float:
        return self.end - self.last_report

    @property
    def duration(self) -> float:
        return self.end - self.start


# ------------------------------------------------------------------------------------- running


def run_study(space: str, overrides: list[str], results: Path) -> dict[str, float]:
    """Runs `python -m study.run` and timestamps its phases from its output lines."""
    command = [sys.executable, "-m", "study.run", space, "--results", str(results)]
    for override in overrides:
        command += ["--set", override]
    marks = {"started": time.time()}
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = (results.parent / f"{results.name}.log").open("w")
    # stdout is read on a thread so the timestamps are taken as lines arrive
    reader = threading.Thread(target=_timestamp_lines, args=(process.stdout, marks, log), daemon=True)
    reader.start()
    code = process.wait()
    reader.join()
    marks["exited"] = time.time()
    log.close()
    if code != 0:
        raise SystemExit(f"study.run exited with {code}; its output is in {log.name}")
    return marks


def _timestamp_lines(stream, marks: dict[str, float], log) -> None:
    for line in stream:
        log.write(line)
        if FIT_DONE_MARK in line and line.split()[0].isdigit():
            marks["fit_done"] = time.time()
        elif line.startswith(REPORT_MARK):
            marks["report_done"] = time.time()


# ------------------------------------------------------------------------------------- reading


def trial_start_times(experiment: Path) -> dict[str, tuple[float, float]]:
    """trial id -> (Tune's start_time, last_result_time), from the newest experiment state."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        raise ValueError(f"{experiment}: no experiment_state-*.json; is this a study's trials directory?")
    times = {}
    for trial_json, runtime_json in json.loads(states[-1].read_text())["trial_data"]:
        trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        runtime = json.loads(runtime_json) if isinstance(runtime_json, str) else runtime_json
        times[trial["trial_id"]] = (runtime["start_time"], runtime["last_result_time"])
    return times


def samples_per_optimizer_step(results: Path, params: dict) -> int:
    """batch_size x grad_accum_steps x num_workers of a trial: the study's base with its params applied."""
    base = yaml.safe_load((results / "study.yaml").read_text())["base"]
    value = {
        key: params.get(key, base.get(section, {}).get(name, default))
        for key, (section, name, default) in {
            "train.batch_size": ("train", "batch_size", 128),
            "train.grad_accum_steps": ("train", "grad_accum_steps", 1),
            "resources.num_workers": ("resources", "num_workers", 1),
        }.items()
    }
    return value["train.batch_size"] * value["train.grad_accum_steps"] * value["resources.num_workers"]


def trial_timing(
    results: Path, trial_dir: Path, start: float, last_result_time: float, staging: Path | None
) -> TrialTiming:
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    rows = [row for row in rows if "train/samples_per_s" in row]  # epoch reports, not mid-epoch ones
    if not rows:
        raise ValueError(f"{trial_dir / 'result.json'}: no epoch reports")
    params = json.loads((trial_dir / "params.json").read_text())
    samples_per_step = samples_per_optimizer_step(results, params)
    trainable_start = last_result_time - rows[-1]["time_total_s"]
    reports = [trainable_start + row["time_total_s"] for row in rows]
    steps = [0] + [row["step"] for row in rows]
    training = [
        (steps[k + 1] - steps[k]) * samples_per_step / row["train/samples_per_s"]
        for k, row in enumerate(rows)
    ]
    work = [reports[k] - reports[k - 1] - training[k] for k in range(1, len(rows))]
    epoch_work = statistics.median(work) if work else 0.0
    staged = staging / trial_dir.name if staging is not None else None
    end = reports[-1]
    if staged is not None and staged.is_dir():
        end = max(path.stat().st_mtime for path in staged.iterdir() if path.is_file())
    marker = results / "train" / trial_dir.name / TRAIN_STORAGE_MARKER
    return TrialTiming(
        trial_id=trial_dir.name.removeprefix("trial_"),
        start=start,
        trainer_start=marker.stat().st_mtime if marker.is_file() else None,
        first_step=reports[0] - epoch_work - training[0],
        last_report=reports[-1],
        end=max(end, reports[-1]),
        training_s=sum(training),
        epoch_work_s=epoch_work,
    )


def staging_directory(log: Path) -> Path | None:
    """Tune's local copy of the experiment, as study.run's output names it ("Result logdir: ...")."""
    if not log.is_file():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(STAGING_MARK):
            return Path(line.removeprefix(STAGING_MARK).strip())
    return None


def read_trials(results: Path) -> list[TrialTiming]:
    experiment = results / "trials"
    staging = staging_directory(results.parent / f"{results.name}.log")
    times = trial_start_times(experiment)
    timings = []
    for trial_id, (start, last_result_time) in times.items():
        trial_dir = experiment / f"trial_{trial_id}"
        if (trial_dir / "result.json").is_file():
            timings.append(trial_timing(results, trial_dir, start, last_result_time, staging))
    if not timings:
        raise ValueError(f"{experiment}: no trial has reported")
    return sorted(timings, key=lambda t: t.start)


# ------------------------------------------------------------------------------------- summary


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for begin, end in sorted(intervals):
        if end > reach:
            total += end - max(begin, reach)
            reach = end
    return total


def summarize(trials: list[TrialTiming], marks: dict[str, float] | None) -> float | None:
    columns = ["trial", "duration", "start ovh", "(to trainer)", "end ovh", "training", "epoch work"]
    print(" ".join(f"{c:>12}" for c in columns))
    for t in trials:
        to_trainer = f"{t.before_trainer:.1f}s" if t.before_trainer is not None else "-"
        to_trainer = f"{to_trainer:>12}"
        cells = [t.duration, t.start_overhead, to_trainer, t.end_overhead, t.training_s, t.epoch_work_s]
        print(f"{t.trial_id:>12} " + " ".join(c if isinstance(c, str) else f"{c:>11.1f}s" for c in cells))
    start_total = sum(t.start_overhead for t in trials)
    end_total = sum(t.end_overhead for t in trials)
    durations = sum(t.duration for t in trials)
    totals = [durations, start_total, None, end_total, sum(t.training_s for t in trials)]
    print(f"{'total':>12} " + " ".join(" " * 12 if c is None else f"{c:>11.1f}s" for c in totals))
    in_trial_share = (start_total + end_total) / durations
    print(
        f"overhead inside trials: {start_total + end_total:.1f} s of {durations:.1f} trial-seconds "
        f"({in_trial_share:.1%})"
    )
    if marks is None:
        return None
    first_start, last_end = trials[0].start, max(t.end for t in trials)
    busy = union_length([(t.start, t.end) for t in trials])
    fit_done = marks.get("fit_done", marks["exited"])
    report_s = marks["report_done"] - fit_done if "report_done" in marks else 0.0
    wall = marks["exited"] - marks["started"] - report_s
    before, after = first_start - marks["started"], marks["exited"] - last_end - report_s
    gaps = (last_end - first_start) - busy
    overhead = before + after + gaps + busy * in_trial_share
    print(
        f"study wall time {wall:.1f} s (ablation report {report_s:.1f} s not counted): driver before the "
        f"first trial {before:.1f} s, after the last {after:.1f} s, gaps between trials {gaps:.1f} s, "
        f"trials running {busy:.1f} s"
    )
    share = overhead / wall
    print(
        f"Ray overhead: {overhead:.1f} s = {share:.1%} of the study's wall time "
        f"(target <= {TARGET_SHARE:.0%}: {'holds' if share <= TARGET_SHARE else 'MISSED'})"
    )
    return share


def marks_file(results: Path) -> Path:
    """The driver's phase timestamps, kept beside the results so a later read can show the shares."""
    return results.parent / f"{results.name}.marks.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("space", nargs="?", default="search_spaces/gc.yaml", help="study YAML")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to study.run, e.g. base.train.epochs=2 (repeatable)",
    )
    parser.add_argument(
        "--results", type=Path, default=None, help="read this finished study instead of running one"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("results/bench_study_overhead"),
        help="where a new study's results go (a fresh subdirectory per run)",
    )
    args = parser.parse_args()
    marks = None
    results = args.results
    if results is None:
        results = args.workdir.resolve() / time.strftime("%Y%m%d-%H%M%S")
        results.parent.mkdir(parents=True, exist_ok=True)
        marks = run_study(args.space, args.overrides, results)
        marks_file(results).write_text(json.dumps(marks))
    elif marks_file(results).is_file():
        marks = json.loads(marks_file(results).read_text())
    try:
        share = summarize(read_trials(results.resolve()), marks)
    except (ValueError, KeyError, OSError) as exc:
        print(f"error: {results}: cannot read the study's timings ({exc})", file=sys.stderr)
        return 2
    print(f"results: {results}")
    return 0 if share is None or share <= TARGET_SHARE else 1


if __name__ == "__main__":
    raise SystemExit(main())
