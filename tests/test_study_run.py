"""`python -m study.run` as a user runs it: real processes, real Ray on CPU, tiny studies.

Covers --dry-run, bad study files through the CLI, an Optuna study end to end (results given as
a file:// URI), resume after the driver is SIGKILLed mid-study, and a study joined to a 2-node local
cluster with --address. The grid study with a diverging cell lives in test_reliability.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SEARCH_SPACES, epoch_rows, result_rows, study_command, study_env, trial_dirs

GC = SEARCH_SPACES / "gc.yaml"
STUDY_TIMEOUT = 400


def run_cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=study_env(), capture_output=True,
                          text=True, timeout=timeout)


def write_yaml(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def tiny_grid_study(tmp_path: Path, seeds: list[int], max_concurrent: int | None = None) -> Path:
    """One grid cell (gc = 0.5) times `seeds`: as many trials as seeds."""
    tree = yaml.safe_load(GC.read_text())
    tree["name"] = "grid"
    tree["search"] = {"method": "grid", "metric": "zeroshot/synthetic_shapes/top1", "mode": "max", "seeds": seeds,
                      "space": {"regularizers.gc": {"type": "grid", "values": [0.5]}}}
    if max_concurrent is not None:
        tree["search"]["max_concurrent_trials"] = max_concurrent
    return write_yaml(tmp_path / "grid.yaml", tree)


# --------------------------------------------------------------------------- no Ray at all


def test_dry_run_prints_the_resolved_study_and_starts_nothing(tmp_path: Path):
    results = tmp_path / "results"
    proc = run_cli(["study.run", str(GC), "--dry-run", "--results", str(results),
                    "--set", "search.num_samples=3", "--set", "base.train.epochs=2"])
    assert proc.returncode == 0, proc.stderr
    resolved, summary = proc.stdout.rstrip().rsplit("\n", 1)
    tree = yaml.safe_load(resolved)
    assert tree["base"]["train"]["epochs"] == 2
    assert tree["search"]["space"]["regularizers.gc"]["type"] == "loguniform"
    # (3 Optuna samples + the baseline) x 5 seeds, one 1-CPU worker each
    assert summary == "study gc: 20 trials (optuna, 5 seed(s)); each trial: 1 worker(s), 1 CPU"
    # its trials, as YAML comments: the baseline the study adds, then the Optuna samples, each x the seeds
    assert "# trials: 20 =\n#   the baseline (regularizers.gc = 0.0: the base values of the searched keys" in resolved
    assert "#   + 3 Optuna suggestion(s) over regularizers.gc × 5 seed(s) [0, 1, 2, 3, 4]" in resolved
    assert "Ray" not in proc.stdout + proc.stderr
    assert not results.exists()


BAD_STUDIES = {
    "malformed": ("name: x\nbase: {train: {epochs: 2}\nsearch: [\n", r":\d+:\d+: malformed YAML"),
    "unknown_key": ("name: x\nbase: {train: {epochz: 2}}\nsearch: {metric: retrieval/mean_recall, space: {}}\n",
                    r"base\.train\.epochz"),
    "wrong_type": ("name: x\nbase: {train: {epochs: many}}\nsearch: {metric: retrieval/mean_recall, space: {}}\n",
                   r"base\.train\.epochs"),
    "bad_range": ("name: x\nsearch:\n  metric: retrieval/mean_recall\n  space:\n"
                  "    regularizers.gc: {type: loguniform, low: 0.0, high: 1.0}\n",
                  r"search\.space\.regularizers\.gc\.low: must be > 0 for loguniform"),
    "unknown_metric": ("name: x\nsearch: {metric: zeroshot/top7, space: {}}\n", r"search\.metric"),
    "missing_data": ("name: x\nbase: {data: {dataset: csv, path: /nonexistent/train.tsv}}\n"
                     "search: {metric: retrieval/mean_recall, space: {}}\n", r"base\.data.*/nonexistent/train\.tsv"),
    "missing_parent": ("name: x\nextends: gcc.yaml\n", r"space\.yaml: extends: no such file .*gcc\.yaml"),
}


@pytest.mark.parametrize("case", sorted(BAD_STUDIES))
def test_bad_study_file_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, case: str):
    text, pattern = BAD_STUDIES[case]
    space = tmp_path / "space.yaml"
    space.write_text(text)
    results = tmp_path / "results"
    proc = run_cli(["study.run", str(space), "--results", str(results)])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr

    assert re.search(pattern, proc.stderr), proc.stderr
    assert not results.exists()


def test_bad_override_names_the_argument(tmp_path: Path):
    results = tmp_path / "results"
    proc = run_cli(["study.run", str(GC), "--results", str(results), "--set", "base.train.epochs=-1"])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "base.train.epochs" in proc.stderr, proc.stderr
    assert not results.exists()


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_optuna_study_end_to_end_with_a_file_uri(tmp_path: Path, start_study):
    results = tmp_path / "results"
    study = start_study(study_command(GC, f"file://{results}",
                                      overrides=["search.num_samples=1", "search.seeds=[0,1]"]))
    assert study.wait(STUDY_TIMEOUT) == 0, study.output()[-3000:]
    output = study.output()
    # the baseline (gc at its base value, 0) once per seed, then the Optuna sample once per seed
    assert "4 trials, 0 failed" in output and f"report: {results}/report/report.html" in output

    assert yaml.safe_load((results / "study.yaml").read_text())["base"]["train"]["epochs"] == 2
    trials = trial_dirs(results)
    assert len(trials) == 4
    finals = {}
    for trial in trials:
        assert epoch_rows(trial) == [0, 1], trial  # every epoch once, in order
        params = json.loads((trial / "params.json").read_text())
        if params["regularizers.gc"] > 0:  # the Optuna sample (loguniform from 0.01), not the baseline
            finals[params["train.seed"]] = result_rows(trial)[-1]["val/zeroshot/synthetic_shapes/top1"]
    assert sorted(finals) == [0, 1]

    # Optuna sees one configuration whose value is the mean over the two seeds, on validation data, with
    # that mean per epoch as its intermediate values; and the baseline's mean, recorded as a trial of its own.
    import optuna

    from trainers.storage import OPTUNA_BASELINE_ATTR

    trials_seen = optuna.load_study(study_name="gc", storage=f"sqlite:///{results / 'optuna.db'}").trials
    assert [trial.state.name for trial in trials_seen] == ["COMPLETE", "COMPLETE"]
    (baseline,) = [trial for trial in trials_seen if OPTUNA_BASELINE_ATTR in trial.user_attrs]
    (searched,) = [trial for trial in trials_seen if OPTUNA_BASELINE_ATTR not in trial.user_attrs]
    assert searched.value == pytest.approx(sum(finals.values()) / 2)
    assert sorted(searched.intermediate_values) == [1, 2]
    assert searched.intermediate_values[2] == pytest.approx(searched.value)
    assert baseline.user_attrs[OPTUNA_BASELINE_ATTR] == {"regularizers.gc": 0.0} and baseline.params == {}
    # the end of the run: the best configuration (on validation, as the report selects it) with its values
    best = next(line for line in output.splitlines() if line.startswith("best configuration (selected on val/"))
    frame_best = "baseline" if baseline.value >= searched.value else "GC="
    assert frame_best in best or (frame_best == "GC=" and "+GC" in best), best
    assert f"optuna-dashboard sqlite:///{results}/optuna.db" in output
    print("\n".join(output.splitlines()[-8:]))

    assert (results / "report" / "report.html").stat().st_size > 0
    from analysis.loading import load

    frame = load(results)
    assert len(frame) == 4 and set(frame["status"]) == {"finished"}
    assert not list(results.rglob("*.tmp"))


def checkpoints(trial: Path) -> dict[str, float]:
    """A 1-worker trial trains in its own process: its checkpoints are Tune's, in the trial's directory."""
    return {p.name: p.stat().st_mtime for p in sorted(trial.glob("checkpoint_*"))}


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path: Path, start_study):
    """SIGKILL `python -m study.run` while its second trial is mid-way; `--resume` finishes the study
    without rerunning the finished trial and without reporting any epoch twice."""
    space = tiny_grid_study(tmp_path, seeds=[0, 1], max_concurrent=1)
    results = tmp_path / "results"
    # epochs of a few seconds each, so the kill lands between two of the second trial's epochs
    overrides = ["base.train.epochs=3", "base.data.train_size=1024"]
    first = start_study(study_command(space, results, overrides=overrides), "first")

    def second_trial_has_reported() -> bool:
        done = [t for t in trial_dirs(results) if epoch_rows(t) == [0, 1, 2]]
        running = [t for t in trial_dirs(results) if epoch_rows(t) and t not in done]
        return len(done) == 1 and len(running) == 1

    first.wait_for(second_trial_has_reported, STUDY_TIMEOUT, "the second trial's first epoch")
    first.proc.kill()
    first.proc.wait()
    finished = next(t for t in trial_dirs(results) if epoch_rows(t) == [0, 1, 2])
    finished_results = (finished / "result.json").read_bytes()
    finished_checkpoints = checkpoints(finished)
    assert len(finished_checkpoints) == 2  # num_to_keep

    # Ray's local processes share the driver's fate (PR_SET_PDEATHSIG): GCS, the raylet and every worker
    # die with it. Ray's dashboard and runtime-env agents poll for the raylet's death instead and can
    # linger for minutes (where PID 1 is slow to reap the raylet's zombie); they hold no resources and
    # no study state, and are killed here by pid, as `ray stop` would on a private machine.
    survivors = [p for p in _wait_until_gone(first, timeout=60) if not _cmdline_has_agent(p)]
    assert not survivors, [" ".join(p.cmdline())[:120] for p in survivors]
    first.cleanup()

    resumed = start_study(study_command(space, results, "--resume", overrides=overrides), "resumed")
    assert resumed.wait(STUDY_TIMEOUT) == 0, resumed.output()[-3000:]
    assert "2 trials, 0 failed" in resumed.output()
    trials = trial_dirs(results)
    assert len(trials) == 2
    for trial in trials:
        assert epoch_rows(trial) == [0, 1, 2], trial
    assert (finished / "result.json").read_bytes() == finished_results
    assert checkpoints(finished) == finished_checkpoints

    from analysis.loading import load

    frame = load(results)
    assert sorted(frame["trial_id"]) == sorted(t.name.removeprefix("trial_") for t in trials)
    assert set(frame["status"]) == {"finished"}
    html = (results / "report" / "report.html").read_text()
    assert "Every expected trial finished." in html
    assert html.count("<td>finished</td>") == 2  # the "All trials" table: one row per trial


@pytest.mark.slow
def test_ctrl_c_stops_the_study_with_a_resume_line_and_a_partial_report(tmp_path: Path, start_study):
    """SIGINT to the study's process group (a terminal's Ctrl-C) while its second trial is mid-way: it stops
    within seconds, exits 130, prints the study's own resume line (not Ray's Tuner.restore hint), writes a
    report marked partial; that exact line then finishes the study without rerunning the finished trial."""
    space = tiny_grid_study(tmp_path, seeds=[0, 1], max_concurrent=1)
    results = tmp_path / "results"
    overrides = ["base.train.epochs=3", "base.data.train_size=1024"]
    first = start_study(study_command(space, results, overrides=overrides), "first", new_session=True)

    def second_trial_has_reported() -> bool:
        done = [t for t in trial_dirs(results) if epoch_rows(t) == [0, 1, 2]]
        return len(done) == 1 and any(epoch_rows(t) and t not in done for t in trial_dirs(results))

    first.wait_for(second_trial_has_reported, STUDY_TIMEOUT, "the second trial's first epoch")
    import os
    import signal
    import time

    sent = time.monotonic()
    os.killpg(first.proc.pid, signal.SIGINT)
    assert first.wait(120) == 130, first.output()[-3000:]
    stopped_after = time.monotonic() - sent
    output = first.output()
    print(f"SIGINT to exit: {stopped_after:.1f} s")
    assert stopped_after < 90  # a few seconds on an idle machine: Tune's actor stop, then the report
    lines = [line for line in output.splitlines() if line.startswith("interrupted: ")]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith(f"interrupted: 1 of 2 trials finished — resume with: python -m study.run {space} "
                               f"--results {results} --set ")
    assert lines[0].endswith(" --resume") and "Tuner.restore" not in output
    assert re.search(r"trial_\w+: epoch 1/3, val/\S+ [\d.]+, ETA .+ \| study: 0/2 trials finished, ETA ", output)
    assert f"Result logdir: {results}/trials" in output  # not the driver's staging directory under /tmp/ray
    assert "Traceback" not in output
    html = (results / "report" / "report.html").read_text()
    assert "Study report: grid (partial)" in html and "Partial report — interrupted: 1 of 2 trials finished" in html
    finished = next(t for t in trial_dirs(results) if epoch_rows(t) == [0, 1, 2])
    finished_results = (finished / "result.json").read_bytes()

    import shlex

    resume = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert resume[:3] == ["python", "-m", "study.run"]
    resumed = start_study([sys.executable, *resume[1:]], "resumed")
    assert resumed.wait(STUDY_TIMEOUT) == 0, resumed.output()[-3000:]
    assert "2 trials, 0 failed" in resumed.output()
    assert all(epoch_rows(t) == [0, 1, 2] for t in trial_dirs(results)) and len(trial_dirs(results)) == 2
    assert (finished / "result.json").read_bytes() == finished_results
    html = (results / "report" / "report.html").read_text()
    assert "(partial)" not in html and "Every expected trial finished." in html
    assert "study resumed" in html  # provenance: both starts of the study, with their commands


def _cmdline_has_agent(process) -> bool:
    try:
        return any(part.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent")) for part in process.cmdline())
    except Exception:  # gone meanwhile
        return True


def _wait_until_gone(study, timeout: float) -> list:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and any(not _cmdline_has_agent(p) for p in study.survivors()):
        time.sleep(0.5)
    return study.survivors()


@pytest.mark.slow
def test_study_on_a_two_node_cluster(tmp_path: Path, start_study):
    """Two 1-CPU nodes joined with --address: both trials run at once, one per node's CPU."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        space = tiny_grid_study(tmp_path, seeds=[0, 1])
        results = tmp_path / "results"
        study = start_study(study_command(space, results, "--address", cluster.address))
        assert study.wait(STUDY_TIMEOUT) == 0, study.output()[-3000:]
    finally:
        cluster.shutdown()
    assert "2 trials, 0 failed" in study.output()
    trials = trial_dirs(results)
    assert len(trials) == 2 and all(epoch_rows(t) == [0, 1] for t in trials)
    # The two trials overlapped in time: concurrency came from the cluster's 2 CPUs.
    spans = sorted((rows[0]["timestamp"] - rows[0]["time_total_s"], rows[-1]["timestamp"])
                   for rows in map(result_rows, trials))
    assert spans[1][0] < spans[0][1]
    assert (results / "report" / "report.html").is_file()
