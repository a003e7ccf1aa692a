"""The study file: a base run configuration plus a search over it, validated once at the edge.

A study YAML has two parts: `base:` (a `trainers.config.RunConfig`, what `python -m trainers.train`
runs) and `search:` (how to vary it). Every problem is reported as one line starting with the
key's dotted path in the YAML, e.g. `search.space.regularizers.gc.low: must be > 0 for loguniform`.
Space keys are themselves dotted (`regularizers.gc`), so they stay flat keys of `search.space`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from trainers.albef.names import FUSED_HEAD_METRICS
from trainers.config import (
    CHECK_PATHS,
    ConfigError,
    RunConfig,
    StrictModel,
    flatten,
    format_validation_error,
    parse_override,
    read_config_yaml,
    set_dotted,
)
from trainers.evaluate.names import TWO_TOWER_METRICS, VALIDATION_PREFIX, MetricNames
from trainers.storage import is_uri

# --------------------------------------------------------------------------- parameters


class _Param(StrictModel):
    # optional: a conditional on/off switch in front of the parameter; off sets the key to `off`.
    optional: bool = False
    # not `off`: YAML 1.1 reads a bare `off` key as the boolean false
    off_value: Any = 0

    @model_validator(mode="after")
    def _off_needs_optional(self):
        # compared with the default, not "was it set": the resolved study.yaml writes every field
        if not self.optional and self.off_value != 0:
            raise ValueError("off_value: only meaningful with optional: true")
        return self


class _Range(_Param):
    low: float
    high: float

    @model_validator(mode="after")
    def _check_range(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low: low and high must be finite")
        if self.low >= self.high:
            raise ValueError(f"low: must be < high ({self.low} >= {self.high})")
        return self

    def sample_values(self) -> dict[str, Any]:
        # the midpoint catches a float range on an int key (1.5 is not an epoch count)
        return {"low": self.low, "high": self.high, "": (self.low + self.high) / 2}


class UniformParam(_Range):
    type: Literal["uniform"]


class LogUniformParam(_Range):
    type: Literal["loguniform"]

    @model_validator(mode="after")
    def _positive(self):
        if self.low <= 0:
            raise ValueError("low: must be > 0 for loguniform")
        return self

    def sample_values(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "": math.sqrt(self.low * self.high)}


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _check_range(self):
        if self.low >= self.high:
            raise ValueError(f"low: must be < high ({self.low} >= {self.high})")
        if self.log and self.low < 1:
            raise ValueError("low: must be >= 1 for a log-scale int")
        return self

    def sample_values(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}


class _Values(_Param):
    values: list[Any] = Field(min_length=1)

    def sample_values(self) -> dict[str, Any]:
        return {f"values[{i}]": value for i, value in enumerate(self.values)}


class ChoiceParam(_Values):
    type: Literal["choice"]


class GridParam(_Values):
    type: Literal["grid"]


ParamSpec = Annotated[
    UniformParam | LogUniformParam | IntParam | ChoiceParam | GridParam, Field(discriminator="type")
]
GRID_TYPES = ("grid", "choice")  # a choice in a grid study is one more grid axis


# --------------------------------------------------------------------------- search


class SchedulerConfig(StrictModel):
    type: Literal["none", "asha"] = "none"
    grace_period: int = Field(1, ge=1)  # epochs every trial runs before ASHA may stop it
    reduction_factor: float = Field(2.0, gt=1.0)
    max_t: int | None = Field(None, ge=1)  # default: base.train.epochs

    @model_validator(mode="after")
    def _grace_within_budget(self):
        if self.max_t is not None and self.grace_period > self.max_t:
            raise ValueError(f"grace_period: must be <= max_t ({self.grace_period} > {self.max_t})")
        return self


class SearchConfig(StrictModel):
    method: Literal["optuna", "grid"] = "optuna"
    metric: str
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(1, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0])
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    max_concurrent_trials: int | None = Field(None, ge=1)

    @field_validator("seeds")
    @classmethod
    def _seeds_unique(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("must list at least one seed")
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"must be unique (repeated: {', '.join(map(str, repeated))})")
        return seeds

    @property
    def searched_keys(self) -> list[str]:
        """The leaf keys the search sets: a block parameter sets every key its values name."""
        keys: list[str] = []
        for key, param in self.space.items():
            if is_block_param(key, param):
                prefix = "" if key == ARM_KEY else f"{key}."
                keys += [f"{prefix}{leaf}" for value in param.values for leaf in flatten(value)]
            else:
                keys.append(key)
        return list(dict.fromkeys(keys))


# --------------------------------------------------------------------------- metrics

# What each evaluation task emits, as the emitting modules declare it: the two-tower suite's tasks and
# ALBEF's fused heads.
_TASK_METRICS: dict[str, MetricNames] = TWO_TOWER_METRICS | FUSED_HEAD_METRICS


def _is_training_metric(metric: str) -> bool:
    """The training loop reports epoch, step and every loss term and training metric under train/."""
    return metric in ("epoch", "step") or metric.startswith("train/")


def metric_task(metric: str) -> str | None:
    """The evaluation task that reports `metric`; None for training metrics; raises if unknown."""
    if _is_training_metric(metric):
        return None
    task = metric.split("/", 1)[0]
    names = _TASK_METRICS.get(task)
    if names is not None and names.declares(metric):
        return task
    raise ValueError(f"unknown metric {metric!r}")


def selection_metric(metric: str) -> str:
    """What Tune, Optuna and ASHA optimise for a study's `search.metric`: its validation counterpart.
    Hyperparameters are selected on validation data; the plain (test) metric is what reports show."""
    return f"{VALIDATION_PREFIX}{metric}"


def _allowed_metrics(tasks: Iterable[str]) -> str:
    """The evaluation metrics a study may name as search.metric (training metrics have no validation split)."""
    return ", ".join(name for task in tasks if task in _TASK_METRICS for name in _TASK_METRICS[task].described())


# --------------------------------------------------------------------------- the pre-registered hypothesis


class ContrastSpec(StrictModel):
    """treated - reference, paired over seeds. A cell is flat dotted keys of the run configuration;
    every key it does not name keeps the base's value, so `{data.info_gap: 1.0, regularizers.align: 1.0}`
    is the arm with pressure alone (gc, dfs, bb at the base's 0), not every arm with pressure."""

    treated: dict[str, Any] = Field(min_length=1)
    reference: dict[str, Any] = Field(min_length=1)


class ComparisonSpec(StrictModel):
    """One comparison on each of `metrics`: `effect`, or the interaction `effect - minus` (a difference
    of two paired differences, per seed)."""

    name: str = Field(min_length=1)
    metrics: list[str] = Field(min_length=1)
    alternative: Literal["less", "greater", "two-sided"]
    effect: ContrastSpec
    minus: ContrastSpec | None = None

    @field_validator("metrics")
    @classmethod
    def _metrics_unique(cls, metrics: list[str]) -> list[str]:
        if len(set(metrics)) != len(metrics):
            raise ValueError("must be unique")
        return metrics


class HypothesisSpec(StrictModel):
    """Written in the study file before it runs; tested at the report's alpha (0.05). The report tests
    `primary` (one Holm family over its metrics) and leads with its verdict; `secondary` comparisons
    form a second Holm family, labelled as such. `power_effect`: the effect size (d_z) for which a
    negative primary result states its power."""

    statement: str = Field(min_length=1)
    correction: Literal["holm"] = "holm"
    primary: ComparisonSpec
    secondary: list[ComparisonSpec] = Field(default_factory=list)
    power_effect: float = Field(1.0, gt=0.0)


def resolved_cell(base: RunConfig, cell: dict[str, Any]) -> dict[str, Any]:
    """The flat configuration of a hypothesis cell: the base with the cell's keys set."""
    tree = base.model_dump()
    for key, value in cell.items():
        set_search_value(tree, key, value)
    return flatten(tree)


def grid_cells(spec: StudySpec) -> list[dict[str, Any]]:
    """Every configuration a grid study runs (seeds aside), flat and resolved."""
    import itertools

    axes = {key: grid_values(param) for key, param in spec.search.space.items()}
    cells = []
    for combination in itertools.product(*axes.values()):
        cells.append(resolved_cell(spec.base, dict(zip(axes, combination, strict=True))))
    return cells


def _hypothesis_problems(spec: StudySpec) -> list[str]:
    hypothesis = spec.hypothesis
    if hypothesis is None:
        return []
    if spec.search.method != "grid":
        return ["hypothesis: a pre-registered comparison needs method: grid (every cell run on every seed)"]
    known_keys = flatten(spec.base.model_dump())
    compared_keys = spec.search.searched_keys
    cells = grid_cells(spec)
    problems = []
    named = [("primary", hypothesis.primary)] + [(f"secondary[{i}]", c) for i, c in enumerate(hypothesis.secondary)]
    for where, comparison in named:
        for i, metric in enumerate(comparison.metrics):
            try:
                task = metric_task(metric)
            except ValueError as exc:
                problems.append(f"hypothesis.{where}.metrics[{i}]: {exc}")
                continue
            if task is not None and task not in spec.base.eval.tasks:
                problems.append(f"hypothesis.{where}.metrics[{i}]: {metric} needs task {task!r} in base.eval.tasks")
        contrasts = [("effect", comparison.effect)] + ([("minus", comparison.minus)] if comparison.minus else [])
        for name, contrast in contrasts:
            for side in ("treated", "reference"):
                cell = getattr(contrast, side)
                path = f"hypothesis.{where}.{name}.{side}"
                unknown = [key for key in cell if key not in known_keys]
                if unknown:
                    problems.append(f"{path}.{unknown[0]}: unknown configuration key")
                    continue
                try:
                    resolved = resolved_cell(spec.base, cell)
                except ConfigError as exc:
                    problems.append(f"{path}: {exc}")
                    continue
                keys = list(dict.fromkeys([*compared_keys, *cell]))
                if not any(all(grid.get(key) == resolved.get(key) for key in keys) for grid in cells):
                    where_text = ", ".join(f"{key}={value}" for key, value in cell.items())
                    problems.append(f"{path}: no grid cell of search.space is {where_text} "
                                    "(with every other searched key at the base's value)")
    return problems


# --------------------------------------------------------------------------- the study


class StudySpec(StrictModel):
    name: str = Field(min_length=1)
    base: RunConfig = Field(default_factory=RunConfig)
    search: SearchConfig
    hypothesis: HypothesisSpec | None = None  # pre-registered comparisons (see HypothesisSpec)
    # whether local data paths must exist: not for results read away from their data (see build_study)
    _check_paths: bool = PrivateAttr(True)

    @model_validator(mode="after")
    def _cross_check(self, info: ValidationInfo) -> StudySpec:
        self._check_paths = (info.context or {}).get(CHECK_PATHS, True)
        # problems that span base and search: reported with full paths, so raised without a field
        problems = (
            (_data_path_problems(self.base) if self._check_paths else [])
            + _metric_problems(self)
            + _method_problems(self.search)
            + _space_key_problems(self)
            + _hypothesis_problems(self)
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def trial_run_config(self, params: dict[str, Any]) -> RunConfig:
        """The base configuration with flat dotted `params` (including train.seed) set."""
        tree = self.base.model_dump()
        for key, value in params.items():
            set_search_value(tree, key, value)
        try:
            return RunConfig.model_validate(tree, context={CHECK_PATHS: self._check_paths})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "trial")) from None

    def num_trials(self) -> int:
        """Configurations (grid cells or Optuna samples) times seeds."""
        if self.search.method == "grid":
            configurations = math.prod(len(grid_values(p)) for p in self.search.space.values())
        else:
            configurations = self.search.num_samples + 1  # study.run adds the base configuration as the baseline
        return configurations * len(self.search.seeds)

    def to_yaml_dict(self) -> dict[str, Any]:
        """The resolved study (all defaults filled in) as plain YAML-safe data, for study.yaml."""
        return self.model_dump(mode="json")


SWITCH_SUFFIX = ":on"  # Optuna's on/off switch of an optional parameter is `<key>:on`


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration keys a trial sets (Tune's config, or its params.json): Tune's internal keys and
    on/off switches removed."""
    return {
        key: value
        for key, value in config.items()
        if not key.startswith("__") and not key.endswith(SWITCH_SUFFIX)
    }


def grid_values(param: ChoiceParam | GridParam) -> list[Any]:
    """The values of one grid axis; an optional parameter adds its off value."""
    return [*param.values, param.off_value] if param.optional else list(param.values)


def _data_path_problems(base: RunConfig) -> list[str]:
    """Data paths RunConfig lets through: the directory of a shard pattern, and zero-shot sets.
    A study fans out to many workers, so a placeholder path must fail here, before Ray starts."""
    problems = []
    data = base.data
    if data.dataset != "synthetic" and data.path:
        for path in data.path.split("::"):
            if not is_uri(path) and "{" in path:
                directory = Path(os.path.dirname(path.split("{", 1)[0]) or ".")
                if not directory.is_dir():
                    problems.append(f"base.data.path: directory {directory} of {path} does not exist")
    for i, entry in enumerate(data.zeroshot):
        # "folder:/images::/classnames.txt" names two paths (the contents are checked by study.run)
        for path in entry.partition(":")[2].split("::"):
            if path and not is_uri(path) and not Path(path).exists():
                problems.append(f"base.data.zeroshot[{i}]: {path} does not exist")
    return problems


def _metric_problems(spec: StudySpec) -> list[str]:
    metric, tasks = spec.search.metric, spec.base.eval.tasks
    if metric.startswith(VALIDATION_PREFIX):
        return [f"search.metric: name the plain metric ({metric.removeprefix(VALIDATION_PREFIX)}); the study "
                f"optimises its validation counterpart {metric} itself and reports the plain (test) one"]
    try:
        task = metric_task(metric)
    except ValueError as exc:
        return [f"search.metric: {exc} (allowed: {_allowed_metrics(tasks)})"]
    if task is None:
        return [f"search.metric: {metric} is a training metric, which has no validation counterpart; "
                f"hyperparameters are selected on validation data (allowed: {_allowed_metrics(tasks)})"]
    if task not in tasks:
        return [
            f"search.metric: {metric} needs task {task!r} in base.eval.tasks "
            f"(evaluated: {', '.join(tasks)}. Allowed metrics: {_allowed_metrics(tasks)})"
        ]
    if task == "kshot" and int(metric.removeprefix("kshot/k")) not in spec.base.eval.kshot:
        return [f"search.metric: {metric} needs its K in base.eval.kshot (have {spec.base.eval.kshot})"]
    if spec.search.scheduler.type == "asha" and not spec.base.eval.every_epoch:
        return ["search.scheduler.type: asha compares trials every epoch; set base.eval.every_epoch: true"]
    problem = _validation_counterpart_problem(spec.base, metric, task)
    return [f"search.metric: {problem}"] if problem else []


def _validation_counterpart_problem(base: RunConfig, metric: str, task: str) -> str | None:
    """Why evaluation would not report val/<metric> for this configuration, or None when it will."""
    data = base.data
    if data.dataset == "synthetic":
        from trainers.data.synthetic_tasks import PROBES, ZEROSHOT_SETS

        sets, probe_targets = list(ZEROSHOT_SETS), [name for name, *_ in PROBES]
        first_probe_target = next(name for name, _, kind, _ in PROBES if kind == "shared")
    else:
        from trainers.data.real_tasks import KINDS_WITH_TRAINING_SPLIT, zeroshot_set_name

        kinds = {zeroshot_set_name(entry): entry.partition(":")[0] for entry in data.zeroshot}
        sets = list(kinds)
        probe_targets = [name for name, kind in kinds.items() if kind in KINDS_WITH_TRAINING_SPLIT]
        first_probe_target = next(iter(kinds), None)
    part = metric.split("/")
    if task == "zeroshot" and part[1] not in sets:
        return f"{metric} names no zero-shot set of base.data (sets: {', '.join(sets) or 'none'})"
    if task == "linear_probe" and part[1] != "top1" and part[1] not in probe_targets:
        return (f"{metric}: no probe {part[1]!r} with validation data (probes with it: "
                f"{', '.join(probe_targets) or 'none'})")
    if (task == "kshot" or metric == "linear_probe/top1") and first_probe_target not in probe_targets:
        return (f"{metric} is scored on the first zero-shot set's probe ({first_probe_target}), which has no "
                "validation data (its probe trains on the validation half)")
    if data.dataset != "synthetic":
        if task in ("vqa", "nlvr", "ve"):
            return f"{metric}: real {task} annotations have no validation split, so val/{metric} is never reported"
        if task in ("retrieval", "structure") and "retrieval" not in data.annotations:
            return f"{metric} needs base.data.annotations.retrieval (its validation part is selected on)"
    return None


def _method_problems(search: SearchConfig) -> list[str]:
    problems = []
    for key, param in search.space.items():
        if search.method == "grid" and param.type not in GRID_TYPES:
            problems.append(
                f"search.space.{key}.type: {param.type} cannot be searched by method grid "
                "(use type grid or choice, or method optuna)"
            )
        elif search.method == "optuna" and param.type == "grid":
            problems.append(
                f"search.space.{key}.type: grid cannot be searched by method optuna "
                "(use type choice, or method grid)"
            )
        elif search.method == "optuna" and param.type == "choice":
            problems += _categorical_problems(key, param)
    if search.method == "optuna" and not search.space:
        problems.append(
            "search.space: optuna needs at least one parameter (use method: grid to only repeat seeds)"
        )
    if search.method == "optuna" and search.scheduler.type == "asha" and len(search.seeds) > 1:
        # seeds are repeats of one Optuna trial (Ray's Repeater), which averages whatever each
        # repeat reported: stopping some seeds early would skew what Optuna learns
        problems.append(
            "search.scheduler.type: asha cannot stop seed repeats of an optuna trial "
            "(use one seed, method grid, or scheduler none)"
        )
    if search.method == "grid" and search.num_samples != 1:
        problems.append("search.num_samples: a grid runs each cell once per seed; leave num_samples at 1")
    return problems


def _categorical_problems(key: str, param: ChoiceParam) -> list[str]:
    # Optuna stores categorical choices in its database, which takes only scalars
    return [
        f"search.space.{key}.values[{i}]: optuna choices must be numbers, strings, booleans or null"
        for i, value in enumerate(param.values)
        if not (value is None or isinstance(value, bool | int | float | str))
    ]


def _space_key_problems(spec: StudySpec) -> list[str]:
    known_keys = flatten(spec.base.model_dump())
    problems = []
    for key, param in spec.search.space.items():
        if key == "train.seed":
            problems.append(f"search.space.{key}: seeds come from search.seeds")
        elif is_block_param(key, param):
            if spec.search.method != "grid":
                problems.append(f"search.space.{key}: a grid over configuration blocks needs method: grid")
            else:
                problems += _sample_value_problems(spec, key, param)
        elif key not in known_keys:
            # the base's dump has only its own family's model keys
            family = spec.base.model.family
            reason = f"not a key of the {family} family" if key.startswith("model.") else "unknown configuration key"
            problems.append(f"search.space.{key}: {reason}")
        else:
            problems += _sample_value_problems(spec, key, param)
    return problems


# A grid axis over partial run configurations: `arm: {type: grid, values: [{data.info_gap: 0.0},
# {data.info_gap: 1.0, regularizers: {align: 1.0, dfs: 0.5}}]}`. Each value (flat dotted keys, nested
# blocks, or both) is merged into the whole configuration, so a grid can run a list of arms that are
# not a Cartesian product of its keys.
ARM_KEY = "arm"


def set_search_value(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set one search-space value in a configuration tree: merged into a block, or, for `arm`, each of
    its keys into the whole tree."""
    if key == ARM_KEY and isinstance(value, dict):
        for arm_key, arm_value in value.items():
            set_dotted(tree, arm_key, arm_value, merge=True)
    else:
        set_dotted(tree, key, value, merge=True)


def is_block_param(key: str, param: Any) -> bool:
    """A grid over partial configuration blocks ("arms"): `regularizers: {type: grid, values:
    [{align: 1}, {align: 1, gc: 0.5}]}`; each value is merged into the base's block (or, under the key
    `arm`, into the whole configuration)."""
    values = param.values if param.type in GRID_TYPES else None
    return "." not in key and bool(values) and all(isinstance(v, dict) for v in values)


def _sample_value_problems(spec: StudySpec, key: str, param: Any) -> list[str]:
    """Build a RunConfig with each value the parameter can take, so a wrong type is caught now."""
    samples = param.sample_values()
    if param.optional:
        samples["off_value"] = param.off_value
    problems = []
    for where, value in samples.items():
        tree = spec.base.model_dump()
        try:
            set_search_value(tree, key, value)
            RunConfig.model_validate(tree, context={CHECK_PATHS: spec._check_paths})
        except (ValidationError, ConfigError) as exc:
            path = f"search.space.{key}" + (f".{where}" if where else "")
            message = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            detail = message.removeprefix("Value error, ")
            problems.append(f"{path}: {value!r} is not a valid value of {key} ({detail})")
            break  # one message per parameter
    return problems


# --------------------------------------------------------------------------- loading


_PARAM_TAGS = {"uniform", "loguniform", "int", "choice", "grid"}


class _ErrorItems:
    """Just enough of a ValidationError (its `errors()`) to hand single items to
    trainers.config.format_validation_error."""

    def __init__(self, items: list[dict[str, Any]]):
        self._items = items

    def errors(self) -> list[dict[str, Any]]:
        return self._items


def _without_param_tag(loc: tuple) -> tuple:
    # pydantic puts the discriminated union's tag (e.g. `loguniform`) into the location
    if len(loc) >= 4 and loc[:2] == ("search", "space") and loc[3] in _PARAM_TAGS:
        return loc[:3] + loc[4:]
    return loc


def format_study_error(error: ValidationError) -> str:
    """One line per problem, each starting with its dotted path in the study YAML."""
    lines = []
    for item in error.errors():
        if not item["loc"]:  # cross-field problems carry their full paths already
            lines.append(item["msg"].removeprefix("Value error, "))
        elif item["type"] == "invalid_key" and isinstance(item["input"], bool):
            path = ".".join(str(p) for p in _without_param_tag(tuple(item["loc"]))[:-1])
            lines.append(
                f"{path}: a key reads as {item['input']} (YAML reads bare on/off/yes/no as booleans)"
            )
        else:
            tagless = {**item, "loc": _without_param_tag(tuple(item["loc"]))}
            lines.append(format_validation_error(_ErrorItems([tagless])))
    return "; ".join(lines)


def build_study(tree: dict[str, Any], check_paths: bool = True) -> StudySpec:
    """Validate a study. `check_paths=False`: local data paths need not exist (a study's results read on
    another machine than the one that trained them)."""
    try:
        return StudySpec.model_validate(tree, context={CHECK_PATHS: check_paths})
    except ValidationError as exc:
        raise ConfigError(format_study_error(exc)) from None


def set_study_key(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key of a study file. Under `search.space` the parameter names are
    themselves dotted, so the longest existing parameter name that prefixes the rest wins."""
    prefix = "search.space."
    if not key.startswith(prefix):
        set_dotted(tree, key, value)
        return
    rest = key.removeprefix(prefix)
    space = tree.setdefault("search", {}).setdefault("space", {})
    if not isinstance(space, dict):
        raise ConfigError(f"--set {key}: search.space is not a mapping")
    owners = sorted((k for k in space if rest == k or rest.startswith(f"{k}.")), key=len, reverse=True)
    if not owners or owners[0] == rest:
        space[rest] = value  # a whole parameter, new or replaced
        return
    if not isinstance(space[owners[0]], dict):
        raise ConfigError(f"--set {key}: search.space.{owners[0]} is not a mapping")
    set_dotted(space[owners[0]], rest.removeprefix(f"{owners[0]}."), value)


def load_study(path: str | Path, overrides: Iterable[str] = (), check_paths: bool = True) -> StudySpec:
    """Read a study YAML, apply `--set dotted.key=value` overrides, validate; ConfigError on any problem."""
    tree = read_config_yaml(path)
    for item in overrides:
        set_study_key(tree, *parse_override(item))
    return build_study(tree, check_paths)
