"""Where files live: a local path or a URI, the names of a study's results directory, and the one
atomic writer. The lowest layer: `trainers`, `analysis` and `study` all read these from here.

A location with a scheme (`s3://`, `gs://`) is a URI, handled through pyarrow's file systems; a plain
path or a `file://` URI is local.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# --------------------------------------------------------------------------- a study's results directory

STUDY_FILE = "study.yaml"  # the resolved study
TRIALS_DIR = "trials"  # Tune's experiment: one directory per trial (`search.trial_name`)
TRAIN_DIR = "train"  # Ray Train runs of worker-group trials
OPTUNA_FILE = "optuna.db"  # Optuna's RDB storage (optuna studies)
OPTUNA_BASELINE_ATTR = "baseline"  # the user attribute of the baseline's record in optuna.db
PROVENANCE_FILE = "provenance.json"  # command, commit, packages and machine of each start
REPORT_DIR = "report"
# in a trial's directory (beside Tune's result.json, progress.csv, params.json, error.txt)
EMBEDDINGS_FILE = "embeddings.npz"  # also in a training checkpoint's directory
REPORTS_DIR = "reports"  # in a worker-group trial's Train run: every report, replayed on a restart


# --------------------------------------------------------------------------- local or URI


def is_uri(location: str) -> bool:
    """A remote location (`s3://...`); a plain path and a `file://` URI are local."""
    return "://" in location and not location.startswith("file://")


def local_path(location: str) -> Path:
    """The absolute local path of a plain path or a `file://` URI."""
    return Path(location.removeprefix("file://")).expanduser().resolve()


def absolute_location(location: str) -> str:
    """A URI as given; a local location as an absolute path (what Ray's storage_path wants)."""
    return location if is_uri(location) else str(local_path(location))


def filesystem_of(location: str) -> tuple[Any, str]:
    """(pyarrow file system, path in it) of a local path or a URI."""
    import pyarrow.fs

    uri = location if is_uri(location) else f"file://{local_path(location)}"
    return pyarrow.fs.FileSystem.from_uri(uri)


# --------------------------------------------------------------------------- atomic writes


Content = str | bytes | Callable[[IO[bytes]], Any]


def write_atomic(path: str | Path, content: Content, filesystem: Any = None) -> Path | str:
    """Write `content` (text, bytes, or a function that writes to a binary stream) to a temporary
    file beside `path`, then rename it onto `path`: a reader, or a kill mid-write, never leaves half a
    file. `filesystem`: a pyarrow file system that `path` is in (remote storage); default local."""
    if isinstance(content, str):
        content = content.encode()  # before any file exists: text that cannot be encoded writes nothing
    write = content if callable(content) else lambda stream: stream.write(content)
    if filesystem is not None:
        path = str(path)
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(f"{path}.tmp") as stream:
            write(stream)
        filesystem.move(f"{path}.tmp", path)
        return path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; results and reports are meant to be read by others
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
