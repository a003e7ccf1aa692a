"""Tune's result.json writer, keeping every epoch of a trial once across restarts of the trial.

Tune writes a trial's result row as soon as the result arrives, and registers the checkpoint reported
with it only afterwards (a separate `save` call on the trial's actor). A trial process killed between
the two is restarted from the checkpoint before, trains that epoch again and reports it again; Tune's
own writer appends, so result.json would hold the epoch twice. This writer, at every (re)start of a
trial, first drops the rows after the checkpoint the trial resumes from: those epochs are about to be
trained and reported again. (A worker-group trial reports without Tune checkpoints: its restart starts
result.json empty, and it replays the reports it kept beside its Train run, `study/trial.py`.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.logger import JsonLoggerCallback
from ray.tune.result import EXPR_RESULT_FILE, TRAINING_ITERATION

from trainers.storage import write_atomic


def rows_up_to(lines: list[str], last_iteration: int) -> list[str]:
    """The result rows of iterations 1..last_iteration; a line cut short by a killed writer is dropped."""
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get(TRAINING_ITERATION, 0) <= last_iteration:
            kept.append(line if line.endswith("\n") else line + "\n")
    return kept


class ResultLog(JsonLoggerCallback):
    """Tune's JsonLoggerCallback (Tune adds none of its own when one is given), truncating at each start."""

    def log_trial_start(self, trial: Any) -> None:
        super().log_trial_start(trial)  # restores result.json from storage and opens it for appending
        resumed = trial.latest_checkpoint_result
        last_iteration = int(resumed.metrics.get(TRAINING_ITERATION, 0)) if resumed else 0
        path = Path(trial.local_path, EXPR_RESULT_FILE)
        lines = path.read_text().splitlines(keepends=True)
        kept = rows_up_to(lines, last_iteration)
        if kept != lines:
            self._trial_files[trial].close()
            write_atomic(path, "".join(kept))
            self._trial_files[trial] = path.open("at")
