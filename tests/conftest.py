"""Shared helpers for the study runner's end-to-end tests: tiny studies run as real `python -m study.run`
processes, and the Ray processes each one started found (and cleaned up) by process ancestry, never by name,
because other people's Ray clusters may run on the same machine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
SEARCH_SPACES = REPO / "search_spaces"

# Small enough for a loaded 2-core machine: 4 steps per epoch, a 64-sample evaluation.
TINY_OVERRIDES = [
    "base.data.train_size=256",
    "base.data.eval_size=64",
    "base.data.image_size=32",
    "base.train.epochs=2",
    "base.train.batch_size=64",
    "base.train.warmup_steps=2",
    "base.eval.tasks=[zeroshot,structure]",
]


def study_command(space: str | Path, results: str | Path, *extra: str, overrides: list[str] = ()) -> list[str]:
    sets = [part for item in [*TINY_OVERRIDES, *overrides] for part in ("--set", item)]
    return [sys.executable, "-m", "study.run", str(space), "--results", str(results), *sets, *extra]


def study_env() -> dict[str, str]:
    # A private Ray temp dir per test session would break `ray stop` semantics; the shared default is fine,
    # but Ray must not reuse a cluster someone else started with RAY_ADDRESS.
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = str(REPO)
    return env


class StudyProcess:
    """A running `python -m study.run`; remembers every process it spawned so nothing outlives the test."""

    def __init__(self, command: list[str], log: Path, new_session: bool = False):
        self.log = log
        self.stream = log.open("w")
        # new_session: its own process group, which a test can signal as a terminal's Ctrl-C does
        self.proc = subprocess.Popen(command, cwd=REPO, env=study_env(), stdout=self.stream, stderr=subprocess.STDOUT,
                                     start_new_session=new_session)
        self.seen: dict[int, psutil.Process] = {}

    def descendants(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for child in children:
            self.seen.setdefault(child.pid, child)
        return children

    def train_workers(self) -> list[psutil.Process]:
        return [p for p in self.descendants() if _cmdline_has(p, "RayTrainWorker")]

    def trial_actors(self) -> list[psutil.Process]:
        """Tune's trial processes (a 1-worker trial trains in its own)."""
        return [p for p in self.descendants() if _cmdline_has(p, "ray::StudyTrial")]

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.descendants()  # keep the record of spawned processes fresh
            if condition():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"study exited ({self.proc.returncode}) before {what}:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()[-3000:]}")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.stream.flush()

    def output(self) -> str:
        self.stream.flush()
        return self.log.read_text(errors="replace")

    def survivors(self) -> list[psutil.Process]:
        return [p for p in self.seen.values() if _alive(p)]

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for process in self.survivors():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        self.stream.close()


def _cmdline_has(process: psutil.Process, text: str) -> bool:
    try:
        return any(text in part for part in process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def one_torch_thread():
    """Torch on one thread while a test trains in its own process: the cores are shared with Ray's workers."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def start_study(tmp_path: Path):
    """start_study(command) -> StudyProcess; every process it spawned is killed at teardown."""
    started: list[StudyProcess] = []

    def start(command: list[str], name: str = "study", new_session: bool = False) -> StudyProcess:
        study = StudyProcess(command, tmp_path / f"{name}-{len(started)}.log", new_session)
        started.append(study)
        return study

    yield start
    for study in started:
        study.cleanup()


def result_rows(trial_dir: Path) -> list[dict]:
    """Tune's result.json for one trial: one JSON object per report."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def epoch_rows(trial_dir: Path) -> list[int]:
    """The epochs a trial reported at epoch end (rows carrying `train/samples_per_s`), in order."""
    return [int(row["epoch"]) for row in result_rows(trial_dir) if "train/samples_per_s" in row]


def trial_dirs(results: Path) -> list[Path]:
    trials = results / "trials"
    return sorted(p for p in trials.iterdir() if p.is_dir() and p.name.startswith("trial_")) if trials.is_dir() else []
