"""Compiling a study for Ray Tune: the search space as an Optuna define-by-run function or a grid, the
seeds as repeated trials (`SeededRepeater`), the scheduler, and the `TuneConfig` (`build_tune_config`).

Trial configurations are FLAT dicts keyed by the dotted configuration keys
(`{"regularizers.gc": 0.3, "train.seed": 1}`). Ray's OptunaSearch unflattens suggested names
on "/", never on ".", so dotted names pass through unchanged; the on/off switch of an optional
parameter is therefore named `<key>:on` (a "/" would nest it under the weight and clobber it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from ray import tune
from ray.tune.search import Repeater
from ray.tune.search.repeater import TRIAL_INDEX

from trainers.config import get_dotted
from trainers.storage import OPTUNA_BASELINE_ATTR
from trainers.study_spec import (
    SWITCH_SUFFIX,
    ChoiceParam,
    GridParam,
    IntParam,
    LogUniformParam,
    ParamSpec,
    StudySpec,
    UniformParam,
    grid_values,
    selection_metric,
    trial_params,
)


def trial_name(trial_id: str) -> str:
    """The one name of a trial everywhere: its Tune directory, its row in the progress table, its Ray
    actor, and its Ray Train run (`trials/trial_<id>/`, `train/trial_<id>/`)."""
    return f"trial_{trial_id}"


def trial_label(trial_id: str, config: Mapping[str, Any]) -> str:
    """A trial's name and the values it sets, e.g. `trial_0e8d3_00001 regularizers.gc=0.443 train.seed=1`:
    how the Ray dashboard lists the trial's actor (its repr) and how Ray prefixes the actor's log lines."""
    values = [f"{key}={_short(value)}" for key, value in trial_params(config).items()]
    return " ".join([trial_name(trial_id), *values])


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, Mapping):  # a grid over partial configuration blocks ("arms")
        return "{" + ", ".join(f"{key}: {_short(item)}" for key, item in value.items()) + "}"
    return str(value)


def switch_name(key: str) -> str:
    """Optuna's name for the on/off switch of the optional parameter `key`."""
    return f"{key}{SWITCH_SUFFIX}"


def _suggest(trial: optuna.Trial, key: str, param: ParamSpec) -> Any:
    match param:
        case UniformParam():
            return trial.suggest_float(key, param.low, param.high)
        case LogUniformParam():
            return trial.suggest_float(key, param.low, param.high, log=True)
        case IntParam():
            return trial.suggest_int(key, param.low, param.high, log=param.log)
        case ChoiceParam():
            return trial.suggest_categorical(key, param.values)
    raise ValueError(f"search.space.{key}.type: {param.type} is a grid axis, not an Optuna parameter")


class OptunaDefineByRun:
    """A define-by-run function for ray.tune.search.optuna.OptunaSearch(space=...).

    An optional parameter is conditional: Optuna first suggests `<key>:on`; when off, the weight is
    not suggested at all (so TPE models it only where it exists) and the key gets its `off_value`,
    returned as a constant. It only suggests: Ray forbids computation in it. A class, not a
    closure, because Tune pickles its searcher into the experiment state for `--resume`.
    """

    def __init__(self, space: Mapping[str, ParamSpec]) -> None:
        self.space = dict(space)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any] | None:
        constants = {}
        for key, param in self.space.items():
            if param.optional and not trial.suggest_categorical(switch_name(key), [False, True]):
                constants[key] = param.off_value
            else:
                _suggest(trial, key, param)
        return constants or None


def optuna_define_by_run(space: Mapping[str, ParamSpec]) -> Callable[[optuna.Trial], dict[str, Any] | None]:
    return OptunaDefineByRun(space)


def grid_param_space(space: Mapping[str, ChoiceParam | GridParam], seeds: list[int]) -> dict[str, Any]:
    """Tune's param_space for a grid study: every parameter and the seeds are grid axes."""
    param_space = {key: tune.grid_search(grid_values(param)) for key, param in space.items()}
    param_space["train.seed"] = tune.grid_search(list(seeds))
    return param_space


# --------------------------------------------------------------------------- Tune compilation


class SeededRepeater(Repeater):
    """Repeats each Optuna suggestion once per seed and writes the seed into the trial config,
    so every trial's params.json says which seed it ran; Optuna sees the mean over seeds.

    The first configuration is the baseline (the base values of the searched keys, e.g. every
    weight 0), run once per seed outside Optuna's sampler: a log-scale weight can never reach 0, and
    an ablation table needs the baseline to compare against. Once every seed of it has finished, its
    mean is recorded in the Optuna study as a trial of its own (no parameters, since 0 lies outside a
    log-scale distribution; user attribute `baseline` holds its values), so that Optuna's dashboard
    ranks the searched configurations against it as the report does.

    Each epoch's mean over seeds of a configuration is reported to its Optuna trial as an intermediate
    value once every seed has reached that epoch (optuna-dashboard's intermediate-values plot).
    """

    def __init__(self, searcher: Any, seeds: list[int], baseline: dict[str, Any]) -> None:
        super().__init__(searcher, repeat=len(seeds), set_index=True)
        self.seeds = list(seeds)
        self.baseline = dict(baseline)
        self.baseline_trials: list[str] = []
        self.baseline_scores: dict[str, float] = {}
        self.baseline_recorded = False
        # primary trial id -> {training_iteration -> {trial id -> value}}
        self.step_values: dict[str, dict[int, dict[str, float]]] = {}

    def suggest(self, trial_id: str) -> dict | None:
        if len(self.baseline_trials) < len(self.seeds):
            index = len(self.baseline_trials)
            self.baseline_trials.append(trial_id)
            return {**self.baseline, TRIAL_INDEX: index, "train.seed": self.seeds[index]}
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            config["train.seed"] = self.seeds[config[TRIAL_INDEX]]
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        group = self._trial_id_to_group.get(trial_id)
        value, step = result.get(self.searcher.metric), result.get("training_iteration")
        if group is None or not isinstance(value, int | float) or step is None:
            return  # a baseline trial, or an epoch without evaluation
        primary = group.primary_trial_id
        values = self.step_values.setdefault(primary, {}).setdefault(int(step), {})
        values[trial_id] = float(value)
        optuna_trial = getattr(self.searcher, "_ot_trials", {}).get(primary)
        if len(values) == self.repeat and optuna_trial is not None:
            optuna_trial.report(sum(values.values()) / len(values), int(step))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs: Any) -> None:
        if trial_id not in self.baseline_trials:
            super().on_trial_complete(trial_id, result, **kwargs)
            return
        value = (result or {}).get(self.searcher.metric)
        if isinstance(value, int | float) and math.isfinite(value):
            self.baseline_scores[trial_id] = float(value)
        if len(self.baseline_scores) == len(self.seeds) and not self.baseline_recorded:
            self._record_baseline()

    def _record_baseline(self) -> None:
        study = getattr(self.searcher, "_ot_study", None)
        if study is None:
            return
        mean = sum(self.baseline_scores.values()) / len(self.baseline_scores)
        study.add_trial(optuna.trial.create_trial(
            value=mean, params={}, distributions={},
            user_attrs={OPTUNA_BASELINE_ATTR: self.baseline, "seeds": self.seeds},
        ))
        self.baseline_recorded = True


def build_tune_config(spec: StudySpec, optuna_storage: str | None, concurrency: int) -> tuple[Any, dict[str, Any]]:
    """Tune's TuneConfig and param_space for a study: a grid of every value x seed, or Optuna (storage
    `optuna_storage`, an SQLAlchemy URL; None keeps it in memory) behind a SeededRepeater."""
    search = spec.search
    scheduler = None
    if search.scheduler.type == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=selection_metric(search.metric),
            mode=search.mode,
            max_t=search.scheduler.max_t or spec.base.train.epochs,
            grace_period=search.scheduler.grace_period,
            reduction_factor=search.scheduler.reduction_factor,
        )
    names = {"trial_dirname_creator": _trial_name_of, "trial_name_creator": _trial_name_of}
    # A reused actor keeps torch, open_clip and the task sets loaded for the next trial, but keeps the name
    # the dashboard shows for it too (Ray takes an actor's repr once, when it starts): only a trial that
    # trains in its own process gains enough from that; one that drives a worker group gets a fresh,
    # correctly named actor.
    reuse = spec.base.resources.trains_in_trial_process()
    if search.method == "grid":
        return tune.TuneConfig(num_samples=1, scheduler=scheduler, max_concurrent_trials=concurrency,
                               reuse_actors=reuse, **names), grid_param_space(search.space, search.seeds)

    from ray.tune.search.optuna import OptunaSearch

    storage = optuna.storages.RDBStorage(optuna_storage) if optuna_storage else None
    searcher = OptunaSearch(
        space=optuna_define_by_run(search.space),
        metric=selection_metric(search.metric),
        mode=search.mode,
        study_name=spec.name,
        storage=storage,
        seed=spec.base.train.seed,
    )
    base = spec.base.model_dump()
    baseline = {key: get_dotted(base, key) for key in search.space}
    return tune.TuneConfig(
        search_alg=SeededRepeater(searcher, search.seeds, baseline),
        scheduler=scheduler,
        num_samples=spec.num_trials(),
        max_concurrent_trials=concurrency,
        reuse_actors=reuse,
        **names,
    ), {}


def _trial_name_of(trial: Any) -> str:
    return trial_name(trial.trial_id)
