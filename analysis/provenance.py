"""Where a study's numbers came from: the command, the code's git commit, the date, the packages and the machine.

`python -m study.run` appends one record per start (the first run and every --resume) to
RESULTS_DIR/provenance.json; the report lists them beside the record of its own build.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from trainers.storage import PROVENANCE_FILE, write_atomic

PACKAGES = ("torch", "ray", "optuna", "open_clip_torch", "transformers", "timm", "numpy", "scipy", "pandas")
REPOSITORY = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """HEAD's commit, with "+uncommitted changes" when the work tree differs from it; "unknown" without git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPOSITORY,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit} (+uncommitted changes)" if dirty else commit


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def machine() -> str:
    memory = ""
    try:
        import psutil

        memory = f", {psutil.virtual_memory().total / 2**30:.0f} GiB memory"
    except ImportError:
        pass
    return (f"{platform.node()}: {platform.system()} {platform.release()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs{memory}, Python {platform.python_version()}")


def current(command: list[str]) -> dict[str, Any]:
    """This process's record: `command` is the program and its arguments as typed."""
    return {
        "command": shlex.join(command),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "machine": machine(),
    }


def record_run(results_dir: Path, command: list[str]) -> None:
    """Append this run's record to RESULTS_DIR/provenance.json."""
    runs = read_runs(results_dir)
    runs.append(current(command))
    write_atomic(results_dir / PROVENANCE_FILE, json.dumps({"runs": runs}, indent=1))


def read_runs(results_dir: Path) -> list[dict[str, Any]]:
    path = results_dir / PROVENANCE_FILE
    try:
        return list(json.loads(path.read_text()).get("runs", []))
    except (OSError, ValueError, AttributeError):
        return []


def report_command() -> list[str]:
    """The command that is building the report, as typed (`python -m analysis.report ...` or `study.run`)."""
    program = "python -m " + Path(sys.argv[0]).parent.name + "." + Path(sys.argv[0]).stem \
        if sys.argv and sys.argv[0].endswith(".py") else "python"
    return [*shlex.split(program), *sys.argv[1:]]
