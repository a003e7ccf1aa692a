"""Study files: the shipped search spaces load, --set overrides, every bad file gets one clear line
naming its dotted path, and the search space compiles to the Optuna distributions / Tune grid we expect."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.variant_generator import generate_variants

from study.search import grid_param_space, optuna_define_by_run, switch_name
from trainers.config import ConfigError, RunConfig, load_run_config
from trainers.study_spec import StudySpec, build_study, load_study, trial_params

SEARCH_SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
SELECTED_ON = "val/zeroshot/synthetic_shapes/top1"  # what Tune and Optuna optimise for GOOD_STUDY

GOOD_STUDY = """
name: gc
base:
  data: {train_size: 256, eval_size: 64, image_size: 32}
  train: {epochs: 2}
search:
  method: optuna
  metric: zeroshot/synthetic_shapes/top1
  num_samples: 3
  seeds: [0, 1]
  space:
    regularizers.gc: {type: loguniform, low: 0.01, high: 10.0}
"""


def write_study(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def study_with(tmp_path: Path, edit) -> Path:
    """GOOD_STUDY with `edit(tree)` applied: one defect per test case."""
    tree = yaml.safe_load(GOOD_STUDY)
    edit(tree)
    return write_study(tmp_path, yaml.safe_dump(tree))


@pytest.fixture
def paper_paths(tmp_path: Path) -> list[str]:
    for name in ("cc3m", "cifar10", "cifar100", "imagenet"):
        (tmp_path / name).mkdir()
    zeroshot = [f"{name}:{tmp_path / name}" for name in ("cifar10", "cifar100", "imagenet")]
    return [f"base.data.path={tmp_path}/cc3m/{{00000..00331}}.tar", f"base.data.zeroshot={zeroshot}"]


# --------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("path", sorted(SEARCH_SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_search_space_loads(path: Path, paper_paths: list[str]):
    overrides = paper_paths if path.name == "paper_clip.yaml" else []
    spec = load_study(path, overrides)
    assert spec.name == path.stem
    assert spec.num_trials() >= 2
    # every parameter value the search can produce builds a valid trial configuration
    params = {key: next(iter(param.sample_values().values())) for key, param in spec.search.space.items()}
    assert isinstance(spec.trial_run_config({**params, "train.seed": 1}), RunConfig)


def test_paper_clip_needs_its_paths_filled_in():
    with pytest.raises(ConfigError) as error:
        load_study(SEARCH_SPACES / "paper_clip.yaml")
    message = str(error.value)
    assert message.startswith("base.data.path: directory /path/to/cc3m")
    assert "base.data.zeroshot[0]: /path/to/cifar10 does not exist" in message


def test_paper_clip_is_the_papers_setup(paper_paths: list[str]):
    base = load_study(SEARCH_SPACES / "paper_clip.yaml", paper_paths).base
    assert (base.model.arch, base.data.dataset, base.train.epochs, base.train.batch_size) == (
        "RN50", "webdataset", 64, 128)
    assert (base.train.lr, base.train.weight_decay, base.train.warmup_steps) == (5e-4, 0.1, 10000)
    assert (base.resources.num_workers, base.resources.use_gpu) == (8, True)


def test_default_gc_study_is_small_enough_for_a_laptop():
    spec = load_study(SEARCH_SPACES / "gc.yaml")
    assert spec.base.model.arch == "tiny-cnn" and not spec.base.resources.use_gpu
    assert spec.search.seeds == [0, 1, 2, 3, 4] and spec.num_trials() == (3 + 1) * 5  # + the baseline


def test_combos_is_every_on_off_combination_times_seeds():
    spec = load_study(SEARCH_SPACES / "combos.yaml")
    cells = {tuple(v[k] for k in ("regularizers.gc", "regularizers.bb", "regularizers.dfs"))
             for _, v in generate_variants(grid_param_space(spec.search.space, spec.search.seeds))}
    assert len(cells) == 8 and spec.num_trials() == 8 * 5


# --------------------------------------------------------------------------- overrides


def test_set_overrides_any_key(tmp_path: Path):
    spec = load_study(write_study(tmp_path, GOOD_STUDY), [
        "base.train.epochs=1", "search.num_samples=2", "search.seeds=[0]", "name=renamed",
        "search.space.regularizers.gc.low=0.1",
        "search.space.regularizers.bb={type: uniform, low: 0.0, high: 2.0}",
    ])
    assert (spec.base.train.epochs, spec.search.num_samples, spec.search.seeds, spec.name) == (1, 2, [0], "renamed")
    assert spec.search.space["regularizers.gc"].low == 0.1
    assert spec.search.space["regularizers.bb"].type == "uniform"
    assert spec.num_trials() == (2 + 1) * 1  # the samples and the baseline, once per seed


def test_bad_override_names_its_path(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^base\.train\.epochs: Input should be greater than or equal to 1"):
        load_study(write_study(tmp_path, GOOD_STUDY), ["base.train.epochs=0"])
    with pytest.raises(ConfigError, match=r"^--set search\.seeds: expected dotted\.key=value"):
        load_study(write_study(tmp_path, GOOD_STUDY), ["search.seeds"])


def test_resolved_study_round_trips_through_yaml(tmp_path: Path):
    spec = load_study(write_study(tmp_path, GOOD_STUDY))
    resolved = write_study(tmp_path, yaml.safe_dump(spec.to_yaml_dict()))
    assert load_study(resolved) == spec
    assert spec.to_yaml_dict()["base"]["train"]["lr"] == 5e-4  # defaults are filled in


def test_a_study_extends_another_with_its_own_keys_over_it(tmp_path: Path):
    parent = load_study(write_study(tmp_path, GOOD_STUDY))
    child_path = tmp_path / "bb.yaml"
    child_path.write_text(textwrap.dedent("""
        name: bb
        extends: study.yaml
        base:
          train: {lr: 1.0e-3}
        search:
          num_samples: 1
          space:
            regularizers.bb: {type: uniform, low: 0.0, high: 2.0}
    """))
    child = load_study(child_path, ["base.train.epochs=3"])
    assert child.name == "bb"
    # mappings merge key by key: the parent's data stays beside the child's lr
    assert child.base.data == parent.base.data and child.base.train.lr == 1e-3
    assert child.base.train.epochs == 3  # --set applies over the merged file
    assert (child.search.metric, child.search.seeds) == (parent.search.metric, parent.search.seeds)
    # the searched parameters are the child's alone: gc is not searched as well
    assert list(child.search.space) == ["regularizers.bb"]
    # trainers.train reads the same merged base
    assert load_run_config(child_path).train.lr == 1e-3
    assert load_run_config(child_path).data == parent.base.data


def test_an_extends_chain_is_followed_and_a_cycle_is_an_error(tmp_path: Path):
    write_study(tmp_path, GOOD_STUDY)
    (tmp_path / "middle.yaml").write_text("name: middle\nextends: study.yaml\nbase: {train: {epochs: 7}}\n")
    (tmp_path / "leaf.yaml").write_text("name: leaf\nextends: middle.yaml\n")
    leaf = load_study(tmp_path / "leaf.yaml")
    assert (leaf.name, leaf.base.train.epochs, leaf.base.data.train_size) == ("leaf", 7, 256)

    (tmp_path / "a.yaml").write_text("name: a\nextends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("name: b\nextends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: extends: a\.yaml comes back to this file \(a cycle\)"):
        load_study(tmp_path / "a.yaml")


def test_a_study_that_extends_another_needs_its_own_name(tmp_path: Path):
    write_study(tmp_path, GOOD_STUDY)
    (tmp_path / "child.yaml").write_text("extends: study.yaml\n")
    with pytest.raises(ConfigError, match=r"^name: Field required"):
        load_study(tmp_path / "child.yaml")


# --------------------------------------------------------------------------- bad files


def _set(path: str, value):
    def edit(tree):
        node = tree
        *parents, last = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return edit


def _edits(*edits):
    def edit(tree):
        for one in edits:
            one(tree)
    return edit


BAD_STUDIES = {
    "unknown top-level key": (_set("seach", {}), r"^seach: unknown key$"),
    "unknown key in base": (_set("base/regularizers/gcc", 1.0), r"^base\.regularizers\.gcc: unknown key$"),
    "unknown key in search": (_set("search/metrc", "x"), r"^search\.metrc: unknown key$"),
    "unknown key in a param": (
        _set("search/space/regularizers.gc/lo", 1), r"^search\.space\.regularizers\.gc\.lo: unknown key$"),
    "unknown key in scheduler": (
        _set("search/scheduler", {"type": "asha", "grace": 1}), r"^search\.scheduler\.grace: unknown key$"),
    "wrong type in base": (_set("base/train/epochs", "five"), r"^base\.train\.epochs: Input should be a valid integer"),
    "wrong type in search": (_set("search/num_samples", [1]), r"^search\.num_samples: Input should be a valid integer"),
    "wrong param type": (
        _set("search/space/regularizers.gc/type", "lognormal"),
        r"^search\.space\.regularizers\.gc: Input tag 'lognormal'.*'loguniform'"),
    "low >= high": (
        _set("search/space/regularizers.gc", {"type": "uniform", "low": 2.0, "high": 1.0}),
        r"^search\.space\.regularizers\.gc\.low: must be < high \(2\.0 >= 1\.0\)$"),
    "loguniform low <= 0": (
        _set("search/space/regularizers.gc/low", 0.0),
        r"^search\.space\.regularizers\.gc\.low: must be > 0 for loguniform$"),
    "log int low < 1": (
        _set("search/space/train.epochs", {"type": "int", "low": 0, "high": 4, "log": True}),
        r"^search\.space\.train\.epochs\.low: must be >= 1 for a log-scale int$"),
    "key of another model family in base": (
        _set("base/model/queue_size", 256), r"^base\.model\.queue_size: not a key of the clip family$"),
    "space over a key of another model family": (
        _set("search/space/model.pooling", {"type": "choice", "values": ["cls", "mean"]}),
        r"^search\.space\.model\.pooling: not a key of the clip family$"),
    "unknown space key": (
        _set("search/space/regularizers.gcc", {"type": "uniform", "low": 0, "high": 1}),
        r"^search\.space\.regularizers\.gcc: unknown configuration key$"),
    "space value of the wrong type": (
        _set("search/space/train.epochs", {"type": "uniform", "low": 1, "high": 4}),
        r"^search\.space\.train\.epochs: 2\.5 is not a valid value of train\.epochs \(Input should be a valid integer"),
    "space value out of range": (
        _set("search/space/regularizers.bb_s", {"type": "uniform", "low": 0.5, "high": 1.5}),
        r"^search\.space\.regularizers\.bb_s\.high: 1\.5 is not a valid value of regularizers\.bb_s"),
    "space sets the seed": (
        _set("search/space/train.seed", {"type": "int", "low": 0, "high": 3}),
        r"^search\.space\.train\.seed: seeds come from search\.seeds$"),
    "unknown metric": (
        _set("search/metric", "zeroshot/top2"),
        r"^search\.metric: unknown metric 'zeroshot/top2' \(allowed: zeroshot/<set>/top.*retrieval/mean_recall"),
    "cross-set zero-shot mean": (
        _set("search/metric", "zeroshot/top1"), r"^search\.metric: unknown metric 'zeroshot/top1'"),
    "unknown zero-shot set": (
        _set("search/metric", "zeroshot/cifar10/top1"),
        r"^search\.metric: zeroshot/cifar10/top1 names no zero-shot set of base\.data "
        r"\(sets: synthetic_shapes, synthetic_colours\)$"),
    "validation metric named": (
        _set("search/metric", "val/zeroshot/synthetic_shapes/top1"),
        r"^search\.metric: name the plain metric \(zeroshot/synthetic_shapes/top1\); the study optimises its "
        r"validation counterpart val/zeroshot/synthetic_shapes/top1 itself"),
    "training metric": (
        _set("search/metric", "train/loss"),
        r"^search\.metric: train/loss is a training metric, which has no validation counterpart"),
    "metric task not evaluated": (
        _set("base/eval/tasks", ["retrieval"]),
        r"^search\.metric: zeroshot/synthetic_shapes/top1 needs task 'zeroshot' in base\.eval\.tasks "
        r"\(evaluated: retrieval\. Allowed metrics: .*retrieval/mean_recall"),
    "missing data path": (
        _set("base/data", {"dataset": "csv", "path": "/no/such/train.csv"}),
        r"^base\.data\.path: /no/such/train\.csv does not exist$"),
    "grid method with an optuna param": (
        _set("search/method", "grid"),
        r"^search\.space\.regularizers\.gc\.type: loguniform cannot be searched by method grid"),
    "optuna method with a grid param": (
        _set("search/space/regularizers.gc", {"type": "grid", "values": [0.0, 1.0]}),
        r"^search\.space\.regularizers\.gc\.type: grid cannot be searched by method optuna"),
    "grid with num_samples": (
        _edits(_set("search/space/regularizers.gc", {"type": "grid", "values": [0.0, 1.0]}),
               _set("search/method", "grid")),
        r"^search\.num_samples: a grid runs each cell once per seed"),
    "asha with optuna seed repeats": (
        _set("search/scheduler", {"type": "asha"}),
        r"^search\.scheduler\.type: asha cannot stop seed repeats of an optuna trial"),
    "empty seeds": (_set("search/seeds", []), r"^search\.seeds: must list at least one seed$"),
    "repeated seeds": (_set("search/seeds", [0, 1, 0]), r"^search\.seeds: must be unique \(repeated: 0\)$"),
    "off_value without optional": (
        _set("search/space/regularizers.gc/off_value", 0.5),
        r"^search\.space\.regularizers\.gc\.off_value: only meaningful with optional: true$"),
    "bare off key": (
        _set("search/space/regularizers.gc", {"type": "loguniform", "low": 0.1, "high": 1.0, False: 0}),
        r"^search\.space\.regularizers\.gc: a key reads as False"),
    "asha grace beyond max_t": (
        _set("search/scheduler", {"type": "asha", "grace_period": 5, "max_t": 2}),
        r"^search\.scheduler\.grace_period: must be <= max_t \(5 > 2\)$"),
}


@pytest.mark.parametrize("case", BAD_STUDIES, ids=str)
def test_bad_study_gives_one_line_naming_the_key(tmp_path: Path, case: str):
    edit, expected = BAD_STUDIES[case]
    with pytest.raises(ConfigError) as error:
        load_study(study_with(tmp_path, edit))
    message = str(error.value)
    assert "\n" not in message
    assert re.search(expected, message), message


def test_malformed_yaml_names_file_and_line(tmp_path: Path):
    path = write_study(tmp_path, "name: x\nsearch:\n  metric: [zeroshot/synthetic_shapes/top1\n  mode: max\n")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+:\d+: malformed YAML"):
        load_study(path)


def test_missing_search_section(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^search: Field required$"):
        load_study(write_study(tmp_path, "name: x\n"))


@pytest.mark.parametrize("metric", [
    "zeroshot/synthetic_shapes/top5", "zeroshot/synthetic_colours/top3", "retrieval/t2i_r10",
    "linear_probe/top1", "linear_probe/image_only/text_independent", "kshot/k5", "structure/modality_gap",
])
def test_known_metrics_are_accepted(tmp_path: Path, metric: str):
    tasks = ["zeroshot", "retrieval", "linear_probe", "kshot", "structure"]
    load_study(study_with(tmp_path, _edits(_set("search/metric", metric), _set("base/eval/tasks", tasks))))
    # recognised as its task's metric: the same study without that task is refused, naming the task
    task = metric.split("/")[0]
    others = [other for other in tasks if other != task]
    with pytest.raises(ConfigError, match=rf"^search.metric: {metric} needs task '{task}' in base.eval.tasks"):
        load_study(study_with(tmp_path, _edits(_set("search/metric", metric), _set("base/eval/tasks", others))))


@pytest.mark.parametrize(("zeroshot", "annotations", "metric", "problem"), [
    (["cifar10:{root}/cifar10"], {}, "zeroshot/cifar10/top1", None),
    (["cifar10:{root}/cifar10"], {}, "linear_probe/cifar10/image", None),
    (["imagenet:{root}/imagenet"], {}, "linear_probe/top1",
     r"linear_probe/top1 is scored on the first zero-shot set's probe \(imagenet\), which has no validation data"),
    (["cifar10:{root}/cifar10"], {}, "retrieval/mean_recall",
     r"retrieval/mean_recall needs base\.data\.annotations\.retrieval"),
    (["cifar10:{root}/cifar10"], {"vqa_train": "{root}/a.json", "vqa_test": "{root}/a.json"}, "vqa/accuracy",
     r"vqa/accuracy: real vqa annotations have no validation split"),
])
def test_real_data_metric_needs_a_validation_counterpart(tmp_path: Path, zeroshot, annotations, metric, problem):
    for name in ("cifar10", "imagenet"):
        (tmp_path / name).mkdir()
    (tmp_path / "a.json").write_text("[]")
    data = {"dataset": "csv", "path": str(tmp_path / "a.json"), "zeroshot": [z.format(root=tmp_path) for z in zeroshot],
            "annotations": {key: value.format(root=tmp_path) for key, value in annotations.items()}}
    tasks = ["zeroshot", "retrieval", "linear_probe", "vqa"]
    path = study_with(tmp_path, _edits(_set("base/data", data), _set("base/eval/tasks", tasks),
                                       _set("search/metric", metric)))
    if problem is None:
        assert load_study(path).search.metric == metric
    else:
        with pytest.raises(ConfigError, match=rf"^search\.metric: {problem}"):
            load_study(path)


def test_tune_selects_on_the_validation_metric(tmp_path: Path):
    from study.search import build_tune_config

    edit = _edits(_set("search/seeds", [0]), _set("search/scheduler", {"type": "asha"}))
    tune_config, _ = build_tune_config(load_study(study_with(tmp_path, edit)), f"sqlite:///{tmp_path}/optuna.db", 1)
    assert tune_config.search_alg.searcher.metric == SELECTED_ON == tune_config.scheduler.metric


def test_kshot_metric_needs_its_k(tmp_path: Path):
    edit = _edits(_set("search/metric", "kshot/k20"), _set("base/eval/tasks", ["kshot"]))
    with pytest.raises(ConfigError, match=r"^search\.metric: kshot/k20 needs its K in base\.eval\.kshot"):
        load_study(study_with(tmp_path, edit))


# --------------------------------------------------------------------------- compiling the space


def _space(method: str = "optuna", **params) -> dict:
    tree = yaml.safe_load(GOOD_STUDY)
    tree["search"]["method"] = method
    if method == "grid":
        del tree["search"]["num_samples"]
    tree["search"]["space"] = {key.replace("__", "."): value for key, value in params.items()}
    return StudySpec.model_validate(tree).search.space


DISTRIBUTIONS = [
    ("regularizers.bb_s", {"type": "uniform", "low": 0.1, "high": 0.9}, FloatDistribution(0.1, 0.9)),
    ("regularizers.gc", {"type": "loguniform", "low": 0.01, "high": 10.0}, FloatDistribution(0.01, 10.0, log=True)),
    ("train.epochs", {"type": "int", "low": 1, "high": 8}, IntDistribution(1, 8)),
    ("train.epochs", {"type": "int", "low": 1, "high": 8, "log": True}, IntDistribution(1, 8, log=True)),
    ("regularizers.align", {"type": "choice", "values": [0.0, 0.5, 1.0]}, CategoricalDistribution([0.0, 0.5, 1.0])),
    ("regularizers.inmodal", {"type": "choice", "values": [False, True]}, CategoricalDistribution([False, True])),
]


@pytest.mark.parametrize(("key", "param", "expected"), DISTRIBUTIONS, ids=lambda x: str(x))
def test_define_by_run_suggests_the_expected_distribution(key: str, param: dict, expected):
    trial = optuna.create_study().ask()
    constants = optuna_define_by_run(_space(**{key.replace(".", "__"): param}))(trial)
    assert constants is None
    assert trial.distributions == {key: expected}


def test_optional_param_is_conditional():
    space = _space(regularizers__gc={"type": "loguniform", "low": 0.01, "high": 10.0, "optional": True})
    define = optuna_define_by_run(space)
    off = optuna.trial.FixedTrial({switch_name("regularizers.gc"): False})
    assert define(off) == {"regularizers.gc": 0}
    on = optuna.trial.FixedTrial({switch_name("regularizers.gc"): True, "regularizers.gc": 0.3})
    assert define(on) is None
    # a real trial: the weight's distribution exists exactly when the switch is on
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        define(trial)
        is_on = trial.params[switch_name("regularizers.gc")]
        assert ("regularizers.gc" in trial.distributions) == is_on
        seen.add(is_on)
    assert seen == {False, True}


def test_ray_optuna_search_gives_flat_dotted_configs_and_seeded_repeats():
    """The study's own search algorithm (build_tune_config's): the baseline, then one Optuna suggestion, each
    once per seed, as flat dotted configurations that trial_run_config accepts."""
    from study.search import build_tune_config

    spec = load_study(SEARCH_SPACES / "joint.yaml")
    tune_config, _ = build_tune_config(spec, None, 1)
    seeds = spec.search.seeds
    configs = [tune_config.search_alg.suggest(f"t{i}") for i in range(2 * len(seeds))]
    for config in configs:
        params = trial_params(config)
        assert set(params) == {"regularizers.gc", "regularizers.bb", "regularizers.dfs", "train.seed"}
        run = spec.trial_run_config(params)
        assert run.regularizers.gc == params["regularizers.gc"] and run.train.seed == params["train.seed"]
    assert [c["train.seed"] for c in configs] == seeds * 2
    baseline, searched = configs[: len(seeds)], configs[len(seeds):]
    assert {trial_params(c)["regularizers.gc"] for c in baseline} == {spec.base.regularizers.gc}
    # repeats share the configuration and differ only in the seed
    for group in (baseline, searched):
        assert len({tuple(sorted((k, v) for k, v in trial_params(c).items() if k != "train.seed")) for c in group}) == 1


def test_grid_param_space_crosses_params_optional_off_values_and_seeds():
    space = _space(
        "grid",
        regularizers__gc={"type": "grid", "values": [0.5, 1.0], "optional": True},
        regularizers__inmodal={"type": "choice", "values": [False, True]},
    )
    param_space = grid_param_space(space, [0, 1, 2])
    assert param_space == {
        "regularizers.gc": {"grid_search": [0.5, 1.0, 0]},
        "regularizers.inmodal": {"grid_search": [False, True]},
        "train.seed": {"grid_search": [0, 1, 2]},
    }
    variants = [config for _, config in generate_variants(param_space)]
    assert len(variants) == 3 * 2 * 3
    assert sorted(c["train.seed"] for c in variants) == sorted([0, 1, 2] * 3 * 2)


@pytest.mark.parametrize(("edits", "expected"), [
    ([], (3 + 1) * 2),
    (["search.seeds=[0, 1, 2, 3]"], (3 + 1) * 4),
    (["search.method=grid", "search.num_samples=1",
      "search.space.regularizers.gc={type: grid, values: [0, 1, 2]}",
      "search.space.regularizers.bb={type: grid, values: [0, 1], optional: true}"], 3 * 3 * 2),
])
def test_num_trials(tmp_path: Path, edits: list[str], expected: int):
    spec = load_study(write_study(tmp_path, GOOD_STUDY), edits)
    assert spec.num_trials() == expected
    if spec.search.method == "grid":
        assert len(list(generate_variants(grid_param_space(spec.search.space, spec.search.seeds)))) == expected


def test_trial_run_config_rejects_a_bad_value(tmp_path: Path):
    spec = load_study(write_study(tmp_path, GOOD_STUDY))
    with pytest.raises(ConfigError, match=r"^trial\.regularizers\.gc: Input should be greater than or equal to 0"):
        spec.trial_run_config({"regularizers.gc": -1.0, "train.seed": 0})


def test_optuna_sqlite_study_records_dotted_and_switch_params(tmp_path: Path):
    """The names survive Optuna's RDB storage (what optuna-dashboard reads), and a Repeater group
    reports the mean over its seeds as one Optuna trial."""
    spec = load_study(SEARCH_SPACES / "joint.yaml")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = OptunaSearch(space=optuna_define_by_run(spec.search.space), metric=SELECTED_ON, mode="max",
                            storage=storage, study_name="joint", seed=0)
    repeater = Repeater(searcher, repeat=2, set_index=True)
    for i, score in enumerate([0.2, 0.4]):
        repeater.suggest(f"t{i}")
        repeater.on_trial_complete(f"t{i}", {SELECTED_ON: score, "training_iteration": 1})
    (trial,) = optuna.load_study(study_name="joint", storage=storage).trials
    assert trial.value == pytest.approx(0.3)
    assert {switch_name(k) for k in ("regularizers.gc", "regularizers.bb", "regularizers.dfs")} <= set(trial.params)
    assert all(trial.params[key] > 0 for key in trial.params if not key.endswith(":on"))


def test_seeded_repeater_runs_the_baseline_first_and_records_it_in_optuna():
    """The baseline runs first, once per seed, outside Optuna's sampler; its mean is then added to the Optuna
    study as a trial of its own (so optuna-dashboard ranks against it); each epoch's mean over seeds of a
    searched configuration is its Optuna trial's intermediate value."""
    from study.search import SeededRepeater
    from trainers.storage import OPTUNA_BASELINE_ATTR

    space = build_study({
        "name": "s", "search": {"metric": "zeroshot/synthetic_shapes/top1",
                                "space": {"regularizers.gc": {"type": "loguniform", "low": 0.01, "high": 10}}},
    }).search.space
    optuna_search = OptunaSearch(space=optuna_define_by_run(space), metric=SELECTED_ON, mode="max", seed=0)
    searcher = SeededRepeater(optuna_search, seeds=[3, 4], baseline={"regularizers.gc": 0.0})
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert [c["train.seed"] for c in configs] == [3, 4, 3, 4]
    assert configs[0]["regularizers.gc"] == configs[1]["regularizers.gc"] == 0.0
    assert configs[2]["regularizers.gc"] == configs[3]["regularizers.gc"] > 0
    for step, (first, second) in enumerate([(0.1, 0.3), (0.2, 0.4)], start=1):
        searcher.on_trial_result("t2", {SELECTED_ON: first, "training_iteration": step})
        searcher.on_trial_result("t0", {SELECTED_ON: 0.5, "training_iteration": step})  # the baseline: not Optuna's
        searcher.on_trial_result("t3", {SELECTED_ON: second, "training_iteration": step})
    for trial_id, score in zip(["t0", "t2", "t1", "t3"], [0.9, 0.2, 0.7, 0.4], strict=True):
        searcher.on_trial_complete(trial_id, {SELECTED_ON: score})
    searched, baseline = sorted(optuna_search._ot_study.trials,
                                key=lambda trial: OPTUNA_BASELINE_ATTR in trial.user_attrs)
    assert searched.value == pytest.approx(0.3)  # the searched group's mean
    assert searched.intermediate_values == pytest.approx({1: 0.2, 2: 0.3})
    assert baseline.value == pytest.approx(0.8) and baseline.params == {}
    assert baseline.user_attrs[OPTUNA_BASELINE_ATTR] == {"regularizers.gc": 0.0}
    assert optuna_search._ot_study.best_trial.number == baseline.number  # as the report would say: it won


ARMS = [{"align": 0.0}, {"align": 1.0}, {"align": 1.0, "gc": 0.5}, {"align": 1.0, "dfs": 0.5}]


def test_a_grid_over_regularizer_blocks_merges_each_arm_into_the_base(tmp_path: Path):
    """One arm per regularizer (the paper reports each alone) instead of every on/off combination."""
    spec = load_study(write_study(tmp_path, GOOD_STUDY), [
        "search.method=grid", "search.num_samples=1", "base.regularizers.bb_s=0.4",
        "search.space={data.info_gap: {type: grid, values: [0.0, 1.0]}, "
        f"regularizers: {{type: grid, values: {ARMS}}}}}",
    ])
    assert spec.num_trials() == 2 * len(ARMS) * 2
    variants = [config for _, config in generate_variants(grid_param_space(spec.search.space, spec.search.seeds))]
    assert len(variants) == spec.num_trials()
    runs = [spec.trial_run_config(trial_params(config) | {"train.seed": config["train.seed"]}) for config in variants]
    arms = {(r.regularizers.align, r.regularizers.gc, r.regularizers.dfs) for r in runs}
    assert arms == {(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (1.0, 0.5, 0.0), (1.0, 0.0, 0.5)}
    assert {r.regularizers.bb_s for r in runs} == {0.4}  # the rest of the block is the base's

    assert spec.search.searched_keys == ["data.info_gap", "regularizers.align", "regularizers.gc",
                                         "regularizers.dfs"]


@pytest.mark.parametrize(("arm", "message"), [
    ("{align: 1.0, gcx: 0.5}", r"search\.space\.regularizers\.values\[1\]: .* \(Extra inputs are not permitted\)"),
    ("{align: 1.0, gc: -1}", r"search\.space\.regularizers\.values\[1\]: .*greater than or equal to 0"),
])
def test_a_bad_arm_is_named_by_its_index(tmp_path: Path, arm: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_study(write_study(tmp_path, GOOD_STUDY), [
            "search.method=grid", "search.num_samples=1",
            f"search.space={{regularizers: {{type: grid, values: [{{align: 0.0}}, {arm}]}}}}",
        ])


ROOT_ARMS = ("[{data.info_gap: 0.0, regularizers.align: 0.0}, {data.info_gap: 1.0, regularizers.align: 1.0},"
             " {data.info_gap: 1.0, regularizers: {align: 1.0, dfs: 0.5}}]")


def test_an_arm_axis_runs_a_list_of_partial_configurations_not_a_product(tmp_path: Path):
    """`arm` values set keys of several blocks at once, so a grid can skip cells of the product."""
    spec = load_study(write_study(tmp_path, GOOD_STUDY), [
        "search.method=grid", "search.num_samples=1", "base.regularizers.bb_s=0.4",
        f"search.space={{arm: {{type: grid, values: {ROOT_ARMS}}}}}",
    ])
    assert spec.num_trials() == 3 * 2
    variants = [config for _, config in generate_variants(grid_param_space(spec.search.space, spec.search.seeds))]
    runs = [spec.trial_run_config(trial_params(config)) for config in variants]
    cells = sorted({(r.data.info_gap, r.regularizers.align, r.regularizers.dfs) for r in runs})
    assert cells == [(0.0, 0.0, 0.0), (1.0, 1.0, 0.0), (1.0, 1.0, 0.5)]  # 3 of the product's 8
    assert {r.regularizers.bb_s for r in runs} == {0.4}
    assert spec.search.searched_keys == ["data.info_gap", "regularizers.align", "regularizers.dfs"]


def test_progress_table_names_arm_and_block_keys_as_tune_flattens_them(tmp_path: Path):
    from ray.tune.utils import flatten_dict

    from study.run import progress_table_columns

    spec = load_study(write_study(tmp_path, GOOD_STUDY), [
        "search.method=grid", "search.num_samples=1",
        f"search.space={{arm: {{type: grid, values: {ROOT_ARMS}}}, regularizers: {{type: grid, values: {ARMS}}}}}",
    ])
    columns = progress_table_columns(spec)
    assert columns[:4] == ["arm/data.info_gap", "arm/regularizers.align", "arm/regularizers/align",
                           "arm/regularizers/dfs"]
    flattened = set()
    for _, config in generate_variants(grid_param_space(spec.search.space, spec.search.seeds)):
        flattened |= set(flatten_dict(config))
    assert set(columns) <= flattened  # every column is a key of Tune's flattened config


def test_a_bad_key_in_an_arm_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"search\.space\.arm\.values\[1\]: .*Extra inputs are not permitted"):
        load_study(write_study(tmp_path, GOOD_STUDY), [
            "search.method=grid", "search.num_samples=1",
            "search.space={arm: {type: grid, values: [{data.info_gap: 0.0}, {data.info_gapp: 1.0}]}}",
        ])


def test_an_arm_grid_needs_method_grid(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"search\.space\.regularizers: a grid over configuration blocks needs"):
        load_study(write_study(tmp_path, GOOD_STUDY),
                   ["search.space={regularizers: {type: choice, values: [{align: 0.0}, {align: 1.0}]}}"])
