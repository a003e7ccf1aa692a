"""Read a study's results directory (written by `python -m study.run`) into tidy DataFrames.

A trial is finished (all epochs reported; an error.txt then records failures it recovered from),
failed (error.txt, epochs missing), stopped early
(fewer epochs, no error, under ASHA), or incomplete (no results yet, or fewer epochs without a scheduler
that stops trials: an interrupted or still running study). Trials the
study expected but whose directory does not exist are *missing*; `missing_trials` lists them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.configs import REGULARIZER_KEYS, label_configurations
from trainers.albef.names import TRAINED_FLAG
from trainers.config import flatten
from trainers.storage import STUDY_FILE, TRIALS_DIR
from trainers.study_spec import StudySpec, grid_cells, load_study, trial_params

SEED_KEY = "train.seed"
# Resolved for every trial, searched or not, because labels, plots, tables (weights are shown with the batch
# size they were used at) and the info-gap section need them.
ALWAYS_RESOLVED = (*REGULARIZER_KEYS, "data.info_gap", "train.batch_size")


def read_study(results_dir: str | Path) -> StudySpec:
    """Validate RESULTS_DIR/study.yaml; a missing directory or file is a ValueError naming it. Local data
    paths need not exist here: results are often read away from the data they were trained on."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"{results_dir}: no such directory")
    study_file = results_dir / STUDY_FILE
    if not study_file.is_file():
        raise ValueError(f"{results_dir}: not a study results directory (no {STUDY_FILE})")
    return load_study(study_file, check_paths=False)


# --------------------------------------------------------------------------- one trial


def read_result_rows(trial_dir: Path) -> list[dict[str, Any]]:
    """Every report of a trial; a truncated or corrupt line (an interrupted write) is skipped."""
    result_file = trial_dir / "result.json"
    rows = []
    if result_file.is_file():
        for line in result_file.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    if not rows and (trial_dir / "progress.csv").is_file():
        try:
            rows = pd.read_csv(trial_dir / "progress.csv").to_dict("records")
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            rows = []
    return rows


def _error_reason(trial_dir: Path) -> str | None:
    error_file = trial_dir / "error.txt"
    if not error_file.is_file():
        return None
    lines = [line.strip() for line in error_file.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "failed (empty error.txt)"


def _read_params(trial_dir: Path) -> dict[str, Any]:
    try:
        params = json.loads((trial_dir / "params.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return params if isinstance(params, dict) else {}


def _metric_keys(row: dict[str, Any]) -> list[str]:
    # Our metrics are "/"-separated; Tune's own keys (training_iteration, done, ...) are not.
    return [key for key in row if "/" in key]


def _epochs_completed(rows: list[dict[str, Any]]) -> int:
    epochs = {row["epoch"] for row in rows if isinstance(row.get("epoch"), int | float)}
    if epochs:
        return len(epochs)
    return len({row.get("training_iteration", index) for index, row in enumerate(rows)})


def _final_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    # The last reported value of each metric: mid-epoch reports may lack the evaluation metrics.
    final: dict[str, float] = {}
    for row in rows:
        for key in _metric_keys(row):
            value = row[key]
            if isinstance(value, int | float) and not isinstance(value, bool):
                final[key] = float(value)
    return final


def read_trial(study: StudySpec, trial_dir: Path) -> dict[str, Any]:
    """One tidy record of a trial: identity, status, searched parameters, resources, final metrics."""
    params = _read_params(trial_dir)
    rows = read_result_rows(trial_dir)
    reason = _error_reason(trial_dir)
    epochs = _epochs_completed(rows) if rows else 0
    if reason is not None and epochs >= study.base.train.epochs:
        reason = None  # failed once (error.txt keeps the record), restarted, and finished
    if reason is not None:
        status = "failed"
    elif not rows:
        status, reason = "incomplete", "no results reported"
    elif epochs >= study.base.train.epochs:
        status = "finished"
    elif study.search.scheduler.type == "asha":
        status = "stopped_early"
        reason = f"stopped after {epochs} of {study.base.train.epochs} epochs"
    else:  # nothing stops a trial early without a scheduler: the study was interrupted (or is still running)
        status = "incomplete"
        reason = f"{epochs} of {study.base.train.epochs} epochs so far (--resume continues it)"
    final = _final_metrics(rows)
    if status == "finished" and final.get(TRAINED_FLAG, 1.0) < 0.5:
        status, reason = "not_trained", untrained_reason(final)
    resolved = flatten(study.trial_run_config(trial_params(params)).model_dump())
    record: dict[str, Any] = {
        "trial_id": next((row["trial_id"] for row in rows if "trial_id" in row), trial_dir.name),
        "trial_dir": str(trial_dir),
        "status": status,
        "error": reason,
        "seed": params.get(SEED_KEY, study.base.train.seed),
        "epochs_completed": epochs,
        "time_total_s": rows[-1].get("time_total_s") if rows else None,
    }
    for key in dict.fromkeys([*study.search.searched_keys, *ALWAYS_RESOLVED]):
        record[key] = resolved.get(key)
    for key, value in study.base.resources.model_dump().items():
        record[f"resources.{key}"] = value
    record.update(final)
    return record


# trials that ran to their last epoch: the finished ones, and ALBEF ones whose pre-training linked nothing
ENDED_STATUSES = ("finished", "not_trained")


def untrained_reason(final: dict[str, float]) -> str:
    """Why an ALBEF trial is left out of the comparisons: its pre-training linked no image to its text."""
    return (f"not trained: ITC {final.get('albef/itc_loss', float('nan')):.3f} against its chance "
            f"{final.get('albef/itc_chance', float('nan')):.3f}, ITM accuracy "
            f"{final.get('albef/itm_accuracy', float('nan')):.3f} against its prior "
            f"{final.get('albef/itm_prior_accuracy', float('nan')):.3f} "
            "(needs ITC below chance and ITM above the prior)")


def trial_dirs(results_dir: Path) -> list[Path]:
    """Tune's per-trial directories: every subdirectory of trials/ (Tune's own files sit beside them)."""
    trials_dir = results_dir / TRIALS_DIR
    if not trials_dir.is_dir():
        return []
    children = trials_dir.iterdir()
    return sorted(path for path in children if path.is_dir() and not path.name.startswith("."))


# --------------------------------------------------------------------------- the whole study


def load(results_dir: str | Path) -> pd.DataFrame:
    """One tidy row per trial of the study in `results_dir` (see the module docstring for statuses)."""
    return read_trials(read_study(results_dir), Path(results_dir))


def read_trials(study: StudySpec, results_dir: Path) -> pd.DataFrame:
    """`load` for a study already read from `results_dir`."""
    records = [read_trial(study, path) for path in trial_dirs(results_dir)]
    trials = pd.DataFrame.from_records(records)
    if trials.empty:
        trials = pd.DataFrame(columns=["trial_id", "trial_dir", "status", "error", "seed", *ALWAYS_RESOLVED])
    return label_configurations(trials, [key for key in study.search.searched_keys if key != SEED_KEY])


def load_history(results_dir: str | Path) -> pd.DataFrame:
    """Per-report metrics in long form: trial_id, config, seed, status, epoch, metric, value."""
    return history_of(load(results_dir))


def history_of(trials: pd.DataFrame) -> pd.DataFrame:
    """`load_history` for trials already loaded."""
    frames = []
    for trial in trials.itertuples(index=False):
        rows = read_result_rows(Path(trial.trial_dir))
        records = [
            {
                "trial_id": trial.trial_id,
                "config": trial.config,
                "seed": trial.seed,
                "status": trial.status,
                "training_iteration": row.get("training_iteration", index + 1),
                "epoch": row.get("epoch", row.get("training_iteration", index + 1)),
                "time_total_s": row.get("time_total_s"),
                "metric": key,
                "value": float(row[key]),
            }
            for index, row in enumerate(rows)
            for key in _metric_keys(row)
            if isinstance(row[key], int | float) and not isinstance(row[key], bool)
        ]
        frames.append(pd.DataFrame.from_records(records))
    columns = ["trial_id", "config", "seed", "status", "training_iteration", "epoch", "time_total_s",
               "metric", "value"]
    history = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return history.reindex(columns=columns)


# --------------------------------------------------------------------------- what is missing


def missing_trials(study: StudySpec, trials: pd.DataFrame) -> list[str]:
    """Human-readable descriptions of the trials the study expected but that have no directory."""
    expected = study.num_trials()
    if len(trials) >= expected:
        return []
    if study.search.method != "grid":
        return [f"{expected - len(trials)} of {expected} expected trials have no directory"]
    # compared on the resolved leaf keys that every trial records, so that a grid over configuration
    # blocks or arms (dict values) is matched like any other axis
    keys = [*study.search.searched_keys, "seed"]
    present = {tuple(_canonical(trial.get(key)) for key in keys) for trial in trials.to_dict("records")}
    missing = []
    for cell in grid_cells(study):
        for seed in study.search.seeds:
            values = [*(cell.get(key) for key in keys[:-1]), seed]
            if tuple(_canonical(value) for value in values) not in present:
                missing.append(", ".join(f"{key}={value}" for key, value in zip(keys, values, strict=True)))
    return missing


def _canonical(value: Any) -> Any:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return round(float(value), 12) if is_number else value


def load_optuna_study(storage_path: Path, study_name: str):
    """The study's Optuna record (`optuna.db`); optuna is imported here, for the reports that have one."""
    import optuna

    return optuna.load_study(study_name=study_name, storage=f"sqlite:///{storage_path}")
