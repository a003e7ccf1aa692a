"""Every epoch once in result.json when a trial restarts from a checkpoint older than its last row.

The failure this guards against is a trial process killed after Tune wrote an epoch's row but before it
registered that epoch's checkpoint; the trainable below reproduces that state deterministically: it
reports an epoch without a checkpoint and then dies, so Tune restarts it from the checkpoint before."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import ray
from ray import tune

from study.result_log import ResultLog, rows_up_to


def test_rows_up_to_keeps_the_resumed_iterations_and_drops_a_cut_line():
    lines = [json.dumps({"training_iteration": i}) + "\n" for i in (1, 2, 3)] + ['{"training_iter']
    assert rows_up_to(lines, 2) == lines[:2]
    assert rows_up_to(lines, 0) == []


@pytest.fixture(scope="module")  # one Ray for both writers: starting it is most of each test's time
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _iterations(results: Path) -> list[int]:
    (result_file,) = results.glob("*/result.json")
    return [json.loads(line)["training_iteration"] for line in result_file.read_text().splitlines()]


@pytest.mark.parametrize("writer", ["ResultLog", "tune_default"])
def test_a_row_past_the_last_checkpoint_is_written_once_after_the_restart(tmp_path, local_ray, writer):
    def trainable(config):  # defined here, so Ray ships it by value (workers cannot import tests/)
        checkpoint = tune.get_checkpoint()
        start = 0
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                start = int(Path(directory, "epoch").read_text()) + 1
        for epoch in range(start, 3):
            if epoch == 1 and checkpoint is None:  # first attempt: a row whose checkpoint Tune never sees
                tune.report({"epoch": epoch})
                raise RuntimeError("killed after the row, before the checkpoint")
            with tempfile.TemporaryDirectory() as directory:
                Path(directory, "epoch").write_text(str(epoch))
                tune.report({"epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(directory))

    callbacks = [ResultLog()] if writer == "ResultLog" else []
    tuner = tune.Tuner(trainable, run_config=tune.RunConfig(
        name="restart", storage_path=str(tmp_path), verbose=0, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=1)))
    (result,) = tuner.fit()
    assert result.error is None
    iterations = _iterations(tmp_path / "restart")
    if writer == "ResultLog":
        assert iterations == [1, 2, 3]
    else:  # Tune's own writer appends: the replayed epoch is there twice (why ResultLog exists)
        assert iterations == [1, 2, 2, 3]
