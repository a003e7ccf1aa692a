"""Compiling a study's search space for Ray Tune: an Optuna define-by-run function, or a grid.

Trial configurations are FLAT dicts keyed by the dotted configuration keys
(`{"regularizers.gc": 0.3, "train.seed": 1}`). Ray's OptunaSearch unflattens suggested names
on "/", never on ".", so dotted names pass through unchanged; the on/off switch of an optional
parameter is therefore named `<key>:on` (a "/" would nest it under the weight and clobber it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optuna
from ray import tune
from ray.tune.search.repeater import TRIAL_INDEX

from study.spec import ChoiceParam, GridParam, IntParam, LogUniformParam, ParamSpec, UniformParam, grid_values

SWITCH_SUFFIX = ":on"


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


def seed_for_trial(config: Mapping[str, Any], seeds: list[int]) -> int:
    """The seed of a trial: a grid axis (`train.seed`), or for Optuna the index that
    ray.tune.search.Repeater(set_index=True) gives each repeat of a configuration."""
    if "train.seed" in config:
        return int(config["train.seed"])
    return seeds[config[TRIAL_INDEX]]


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration keys a trial sets: Tune's internal keys and on/off switches removed."""
    return {
        key: value
        for key, value in config.items()
        if not key.startswith("__") and not key.endswith(SWITCH_SUFFIX)
    }
