"""Reliability: what survives a killed worker, a diverging trial, a bad results directory, bad input and a
killed writer; and the security defaults (safe YAML, weights-only checkpoints, a local dashboard behind
Ray's token authentication). Every fault is real: SIGKILLed processes, real mounts, real files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, SEARCH_SPACES, epoch_rows, study_command, study_env, trial_dirs
from PIL import Image

GC = SEARCH_SPACES / "gc.yaml"
STUDY_TIMEOUT = 400
PACKAGES = ("trainers", "study", "analysis")


def run_cli(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=study_env(), capture_output=True,
                          text=True, timeout=timeout)


def assert_one_clear_line(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert re.search(pattern, errors[0]), errors[0]


def grid_study(tmp_path: Path, space: dict, seeds: list[int], **train) -> Path:
    tree = yaml.safe_load(GC.read_text())
    tree["name"] = "grid"
    tree["base"]["train"] |= train
    tree["search"] = {"method": "grid", "metric": "zeroshot/synthetic_shapes/top1", "mode": "max", "seeds": seeds,
                      "space": {key: {"type": "grid", "values": values} for key, values in space.items()}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


# --------------------------------------------------------------------------- faults inside a study


@pytest.mark.slow
@pytest.mark.parametrize("in_trial_process", [True, False], ids=["trial-process", "worker-group"])
def test_training_process_sigkilled_mid_trial_resumes_from_its_checkpoint(
    tmp_path: Path, start_study, in_trial_process: bool
):
    """SIGKILL the process that trains: the trial's own (Tune restarts the trial from its checkpoint)
    or its Ray Train worker (Ray Train restarts the worker group from its checkpoint)."""
    space = grid_study(tmp_path, {"regularizers.gc": [0.5]}, seeds=[0], max_failures=2)
    results = tmp_path / "results"
    study = start_study(study_command(space, results, overrides=[
        "base.train.epochs=3", "base.data.train_size=2048", f"base.resources.in_trial_process={in_trial_process}"]))
    trainers = study.trial_actors if in_trial_process else study.train_workers

    def mid_trial() -> bool:
        """An epoch is reported and a later one is running (a quiet machine may already be past epoch 0)."""
        trials = trial_dirs(results)
        rows = epoch_rows(trials[0]) if trials else []
        return bool(rows) and rows[-1] < 2 and bool(trainers())

    study.wait_for(mid_trial, STUDY_TIMEOUT, "an epoch's report before the last")
    killed = trainers()
    for process in killed:
        process.send_signal(signal.SIGKILL)
    assert study.wait(STUDY_TIMEOUT) == 0, study.output()[-3000:]

    output = study.output()
    assert "1 trials, 0 failed" in output
    if in_trial_process:
        assert not any(p.is_running() for p in killed)
        assert "Restored on" in output and "from checkpoint" in output, "Tune never restarted the trial"
    else:
        assert output.count("Started training worker group") >= 2, "the worker group was never restarted"
    (trial,) = trial_dirs(results)
    # resumed from the epoch-0 (or 1) checkpoint: no epoch is repeated or lost
    assert epoch_rows(trial) == [0, 1, 2]
    from analysis.loading import load

    assert load(results)["status"].tolist() == ["finished"]  # error.txt, if any, records a recovered failure


@pytest.mark.slow
def test_grid_study_goes_on_past_a_diverging_trial(tmp_path: Path, start_study):
    space = grid_study(tmp_path, {"train.lr": [1.0e-3, 1.0e12]}, seeds=[0], grad_clip_norm=None,
                       warmup_steps=0)
    results = tmp_path / "results"
    study = start_study(study_command(space, results, overrides=["base.train.warmup_steps=0"]))
    # exit 1: a trial failed (the others ran on and the report is written)
    assert study.wait(STUDY_TIMEOUT) == 1, study.output()[-3000:]
    assert "2 trials, 1 failed" in study.output()

    by_lr = {json.loads((t / "params.json").read_text())["train.lr"]: t for t in trial_dirs(results)}
    assert sorted(by_lr) == [1.0e-3, 1.0e12]
    assert epoch_rows(by_lr[1.0e-3]) == [0, 1] and not (by_lr[1.0e-3] / "error.txt").exists()
    assert "non-finite loss at step" in (by_lr[1.0e12] / "error.txt").read_text()

    from analysis.loading import load

    frame = load(results).set_index("train.lr")
    assert frame.loc[1.0e-3, "status"] == "finished"
    assert frame.loc[1.0e12, "status"] == "failed"
    assert "non-finite loss at step" in frame.loc[1.0e12, "error"]
    assert "non-finite loss at step" in (results / "report" / "report.html").read_text()


# --------------------------------------------------------------------------- the results directory


def run_tiny_study(results: Path | str) -> subprocess.CompletedProcess:
    command = study_command(GC, results, overrides=["search.num_samples=1", "search.seeds=[0]"])
    return subprocess.run(command, cwd=REPO, env=study_env(), capture_output=True, text=True, timeout=180)


def assert_stopped_before_training(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert_one_clear_line(proc, pattern)
    assert "Ray dashboard" not in proc.stdout and "Started a local Ray" not in proc.stderr


def test_results_dir_under_a_regular_file_is_refused(tmp_path: Path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the results directory should go\n")
    proc = run_tiny_study(blocker / "results")
    assert_stopped_before_training(proc, r"results directory is not writable")
    assert blocker.read_text().startswith("a file")


@pytest.fixture
def mounted_tmpfs(tmp_path: Path):
    """mount(options) -> a fresh tmpfs; real mounts, since root ignores permission bits."""
    mounts: list[Path] = []

    def mount(options: str) -> Path:
        target = tmp_path / f"mnt{len(mounts)}"
        target.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounts.append(target)
        return target

    yield mount
    for target in mounts:
        subprocess.run(["umount", str(target)], check=False)


def test_read_only_results_dir_is_refused(mounted_tmpfs):
    readonly = mounted_tmpfs("ro,size=1m")
    proc = run_tiny_study(readonly / "results")
    assert_stopped_before_training(proc, r"/results: results directory is not writable \(Read-only file system\)")


def test_full_results_dir_is_refused(mounted_tmpfs):
    small = mounted_tmpfs("size=1m")
    proc = run_tiny_study(small / "results")
    assert_stopped_before_training(proc, r"/results: only \d MiB free; a study needs at least \d+")
    assert list(small.rglob("*.yaml")) == []


# --------------------------------------------------------------------------- bad input, through the CLIs


RUN_CONFIG = {
    "name": "bad-input",
    "model": {"family": "clip", "arch": "tiny-vit"},
    "data": {"train_size": 64, "eval_size": 32, "image_size": 32},
    "train": {"epochs": 1, "batch_size": 16, "max_failures": 0},
    "eval": {"tasks": ["structure"]},
}


def write_run_config(tmp_path: Path, **sections) -> Path:
    tree = json.loads(json.dumps(RUN_CONFIG))
    for key, value in sections.items():
        tree[key] = tree.get(key, {}) | value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("train: {epochs: 2\nmodel: [\n", r"run\.yaml:\d+:\d+: malformed YAML"),
        ("train: {epochz: 2}\n", r"train\.epochz: unknown key"),
        ("train: {batch_size: big}\n", r"train\.batch_size"),
        ("data: {info_gap: 1.5}\n", r"data\.info_gap"),
        ("data: {dataset: csv, path: /nonexistent/pairs.tsv}\n", r"data\.path: /nonexistent/pairs\.tsv does not exist"),
    ],
    ids=["malformed", "unknown_key", "wrong_type", "out_of_range", "missing_data_path"],
)
def test_train_cli_rejects_a_bad_config(tmp_path: Path, text: str, pattern: str):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    assert_one_clear_line(run_cli(["trainers.train", str(config), "--storage", str(tmp_path / "runs")]), pattern)
    assert not (tmp_path / "runs").exists()


def write_csv_dataset(root: Path, image_column: str = "filepath", corrupt_row: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"{image_column}\ttitle"]
    for index in range(32):
        image = root / f"{index}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
        if index == corrupt_row:  # header and size intact (the pre-Ray check reads them), pixels cut off
            image.write_bytes(image.read_bytes()[:100])
        lines.append(f"{image.name}\ta photo of thing {index}")
    table = root / "pairs.tsv"
    table.write_text("\n".join(lines) + "\n")
    return table


def test_train_cli_names_a_wrong_csv_column(tmp_path: Path):
    table = write_csv_dataset(tmp_path / "data", image_column="image")
    config = write_run_config(tmp_path, data={"dataset": "csv", "path": str(table), "num_loader_workers": 0})
    proc = run_cli(["trainers.train", str(config), "--storage", str(tmp_path / "runs"), "--no-progress"])
    assert_one_clear_line(proc, rf"{re.escape(str(table))}: no column 'filepath' \(data\.image_key\)")


@pytest.mark.slow
def test_train_cli_names_a_corrupt_image_and_its_row(tmp_path: Path):
    """A corrupt image body (its header reads) is found by one of two Ray Train workers mid-epoch: both
    stop together, the run is not retried although max_failures allows it, and the answer is one line."""
    table = write_csv_dataset(tmp_path / "data", corrupt_row=5)
    config = write_run_config(tmp_path, data={"dataset": "csv", "path": str(table), "num_loader_workers": 1},
                              train={"max_failures": 2},
                              resources={"num_workers": 2, "cpus_per_worker": 1, "use_gpu": False})
    proc = run_cli(["trainers.train", str(config), "--storage", str(tmp_path / "runs"), "--no-progress"],
                   timeout=300)
    # The header is line 1, so image 5 is on row 7.
    assert proc.returncode == 2, proc.stderr[-3000:]
    own_lines = [line for line in proc.stderr.splitlines() if line.strip() and " pid=" not in line]
    assert own_lines[-1].startswith("error: ") and not any("Traceback" in line for line in own_lines)
    assert re.search(rf"{re.escape(str(table))}:row 7: cannot read image .*5\.png", own_lines[-1])
    # one attempt: a retry would read the image, and Ray forward the worker's failure, again
    assert (proc.stdout + proc.stderr).count("5.png (") == 1, proc.stderr[-3000:]
    assert not list((tmp_path / "runs").glob("bad-input/checkpoint_*"))


def test_report_cli_rejects_a_missing_or_broken_results_dir(tmp_path: Path):
    assert_one_clear_line(run_cli(["analysis.report", str(tmp_path / "nowhere")]), r"nowhere")
    results = tmp_path / "results"
    results.mkdir()
    (results / "study.yaml").write_text("name: x\nbase: {train: {epochs: [}\n")
    assert_one_clear_line(run_cli(["analysis.report", str(results)]), r"study\.yaml:\d+:\d+: malformed YAML")


class Payload:
    """A class in a pickle: what weights_only=True must refuse to instantiate."""

    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


@pytest.mark.parametrize("kind", ["foreign_dict", "pickled_class", "truncated"])
def test_evaluate_cli_refuses_a_foreign_or_unreadable_checkpoint(tmp_path: Path, kind: str):
    checkpoint = tmp_path / "checkpoint_epoch_0000"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps(RUN_CONFIG))
    state = checkpoint / "state.pt"
    if kind == "foreign_dict":
        torch.save({"model": {"weight": torch.zeros(2)}, "epoch": 3}, state)
    elif kind == "pickled_class":
        torch.save({"format": "latent-modality-study/1", "payload": Payload()}, state)
    else:
        torch.save({"format": "latent-modality-study/1", "module": {"w": torch.zeros(1000)}}, state)
        state.write_bytes(state.read_bytes()[:200])
    proc = run_cli(["trainers.evaluate", str(checkpoint)])
    expected = "not a checkpoint of this project" if kind == "foreign_dict" else "unreadable checkpoint"
    assert_one_clear_line(proc, rf"{re.escape(str(state))}: {expected}")


# --------------------------------------------------------------------------- atomic writes


WRITER = """
import sys
from pathlib import Path
from trainers.storage import write_atomic
write_atomic(Path(sys.argv[1]), "x" * (400 * 2**20))
"""


def test_a_killed_writer_leaves_the_old_file_intact(tmp_path: Path):
    target = tmp_path / "study.yaml"
    target.write_text("name: old\n")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=REPO, env=study_env())
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any(p.stat().st_size > 0 for p in tmp_path.glob(".study.yaml*.tmp")):
            assert writer.poll() is None, "the writer finished before it could be killed"
            time.sleep(0.01)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert target.read_text() == "name: old\n"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    from trainers.storage import write_atomic

    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "new \ud800")  # a lone surrogate cannot be encoded: the write fails midway
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


# --------------------------------------------------------------------------- security


def package_sources() -> list[Path]:
    return [path for package in PACKAGES for path in (REPO / package).rglob("*.py")]


def test_yaml_is_only_safe_loaded():
    unsafe = re.compile(
        r"yaml\.(load|unsafe_load|full_load|load_all)\(|Loader\s*=\s*yaml\.(Loader|FullLoader|UnsafeLoader)"
    )
    offenders = [f"{path}:{n}" for path in package_sources()
                 for n, line in enumerate(path.read_text().splitlines(), 1) if unsafe.search(line)]
    assert not offenders
    assert sum("yaml.safe_load(" in path.read_text() for path in package_sources()) >= 1


def test_torch_load_is_always_weights_only():
    calls = [(path, match) for path in package_sources()
             for match in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", path.read_text())]
    assert calls
    assert all("weights_only=True" in match.group(0) for _, match in calls), [
        f"{path}: {match.group(0)}" for path, match in calls if "weights_only=True" not in match.group(0)]


DASHBOARD_PROBE = """
import json, os, urllib.error, urllib.request
from pathlib import Path
import psutil, ray
from trainers.train import init_ray

init_ray(None, num_cpus=1)
url = ray._private.worker.global_worker.node.address_info["webui_url"]
host, port = url.rsplit(":", 1)
listening = [c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == int(port)]
def status(headers):
    try:
        return urllib.request.urlopen(urllib.request.Request(f"http://{url}/api/version", headers=headers),
                                      timeout=30).status
    except urllib.error.HTTPError as exc:
        return exc.code
token = Path(os.path.expanduser("~/.ray/auth_token")).read_text().strip()
print(json.dumps({"host": host, "listening": listening, "anonymous": status({}),
                  "with_token": status({"Authorization": f"Bearer {token}"})}))
ray.shutdown()
"""


@pytest.mark.slow
def test_local_dashboard_binds_to_localhost_behind_token_auth():
    proc = subprocess.run([sys.executable, "-c", DASHBOARD_PROBE], cwd=REPO, env=study_env(), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["host"] == "127.0.0.1"
    assert probe["listening"] and set(probe["listening"]) == {"127.0.0.1"}
    assert probe["anonymous"] in (401, 403)
    assert probe["with_token"] == 200
