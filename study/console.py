"""What a running study says on the terminal and how it stops: Tune's progress table pointed at the
results directory, and Ctrl-C / SIGTERM turned into Tune's own graceful stop.

Ray Tune stops a run cleanly when its SIGINT handler (or, always, its SIGUSR1 handler) fires: its
loop ends, the experiment state is saved one last time, the trial actors are stopped, and `Tuner.fit`
returns. `StudyInterrupt` keeps that path but owns the signals (`TUNE_DISABLE_SIGINT_HANDLER=1`), so
that SIGTERM takes it too, the study knows it was interrupted (Tune's `fit` returns as if it had
finished), and the study's own resume line replaces Tune's `Tuner.restore(...)` hint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from typing import Any

from ray import tune

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StudyInterrupt:
    """First SIGINT/SIGTERM: stop the study gracefully (state saved, partial report); a second: at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.tuning = False  # True while Tuner.fit runs: only then is there a Tune loop to end gracefully

    def install(self) -> None:
        # Tune then installs only its SIGUSR1 handler, which this one calls
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        logging.getLogger("ray.tune.tune").addFilter(_drop_tune_stop_messages)

    @contextlib.contextmanager
    def shielding_ray(self):
        """Start Ray's local processes (GCS, raylet, and the workers they spawn) with SIGTERM blocked, as Ray
        itself blocks SIGINT for them: a SIGTERM to the whole process group (a scheduler's, `kill -TERM -PGID`)
        then reaches only this driver, which stops the study gracefully instead of losing Ray under it."""
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    @property
    def interrupted(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM: the shell's convention for a process ended by a signal."""
        return 128 + (self.signum or signal.SIGINT)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None or not self.tuning:
            self.signum = self.signum or signum
            raise KeyboardInterrupt  # before or after the Tune loop, or a second signal: stop now
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: stopping the study — trials are stopped, its state is "
              "saved and a partial report written (send it again to stop at once)", file=sys.stderr, flush=True)
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if not callable(tune_stop):
            raise KeyboardInterrupt
        tune_stop(signal.SIGUSR1, frame)


def _drop_tune_stop_messages(record: logging.LogRecord) -> bool:
    """Tune's own stop notice and its `Tuner.restore(path=..., trainable=...)` hint: the study prints its own."""
    message = record.getMessage()
    return not (message.startswith("Stop signal received") or "Tuner.restore(" in message)


class StudyReporter(tune.CLIReporter):
    """Tune's progress table, with its `Result logdir` line naming the study's trials directory rather than
    the driver's staging directory under /tmp/ray."""

    def __init__(self, trials_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trials_dir = trials_dir

    def _progress_str(self, trials: list, done: bool, *sys_info: str, fmt: str = "psql", delim: str = "\n") -> str:
        text = super()._progress_str(trials, done, *sys_info, fmt=fmt, delim=delim)
        return "\n".join(f"Result logdir: {self.trials_dir}" if line.startswith("Result logdir: ") else line
                         for line in text.split("\n"))


class StudyProgress(tune.Callback):
    """One line per epoch report: the trial's epoch k/N with its metric and ETA, and the study's progress
    (finished trials of all, and an ETA from the seconds per epoch seen so far and the trials running)."""

    def __init__(self, total_trials: int, epochs: int, metric: str) -> None:
        self.total_trials = total_trials
        self.epochs = epochs
        self.metric = metric

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from ray.tune.experiment import Trial

        epoch = int(result.get("training_iteration", 0))
        if epoch <= 0:
            return
        seconds_per_epoch = float(result.get("time_total_s", 0.0)) / epoch
        finished = sum(1 for t in trials if t.status == Trial.TERMINATED)
        running = [t for t in trials if t.status == Trial.RUNNING]
        # Tune hands callbacks a result before it becomes the trial's last_result
        done_epochs = sum(epoch if t is trial else int((t.last_result or {}).get("training_iteration", 0))
                          for t in running)
        remaining = max(self.total_trials - finished, 0) * self.epochs - done_epochs
        study_eta = remaining * seconds_per_epoch / max(len(running), 1)
        value = result.get(self.metric)
        shown = f", {self.metric} {value:.3f}" if isinstance(value, int | float) else ""
        print(f"{trial}: epoch {epoch}/{self.epochs}{shown}, ETA {_duration((self.epochs - epoch) * seconds_per_epoch)}"
              f" | study: {finished}/{self.total_trials} trials finished, ETA {_duration(study_eta)}", flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
