"""The declared metric and loss names are what the code emits: a tiny real evaluation and one training forward
pass of each family (CLIP, ALBEF) must emit only declared names and every declared exact name, so study
validation (`trainers.study_spec`) and the report (`analysis.metrics`), which read the declarations, cannot drift from
the emitters."""

from __future__ import annotations

import pytest
import torch

from trainers.albef.names import FUSED_HEAD_METRICS, PRETRAINING_METRICS
from trainers.config import EVAL_TASKS, RunConfig
from trainers.evaluate.names import TWO_TOWER_METRICS, VALIDATION_PREFIX, MetricNames
from trainers.family import get_family

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# every term on: each family's forward then returns every loss name it declares
EVERY_REGULARIZER = {"gc": 0.5, "bb": 0.5, "dfs": 0.5, "align": 1.0}
TINY_DATA = {"image_size": 16, "train_size": 32, "eval_size": 32, "distractors": 2}
TINY_ALBEF = {"family": "albef", "text_layers": 1, "fusion_layers": 1, "hidden_size": 32, "num_heads": 2,
              "patch_size": 8, "vision_layers": 1, "embed_dim": 16, "queue_size": 16}


def tiny_run(model: dict, tasks: list[str], regularizers: dict) -> RunConfig:
    return RunConfig.model_validate({
        "model": model, "data": TINY_DATA, "train": {"batch_size": 8},
        "regularizers": regularizers,
        "eval": {"tasks": tasks, "kshot": [1, 2], "finetune_epochs": 1, "finetune_batch_size": 16},
    })  # fmt: skip


def declared_for(cfg: RunConfig) -> list[MetricNames]:
    """What the family's evaluation declares for the configuration's tasks."""
    names = [TWO_TOWER_METRICS[task] for task in cfg.eval.tasks if task in TWO_TOWER_METRICS]
    if cfg.model.family == "albef":
        names += [FUSED_HEAD_METRICS[task] for task in cfg.eval.tasks if task in FUSED_HEAD_METRICS]
        names.append(PRETRAINING_METRICS)
    return names


def check_emitted_against_declared(emitted: set[str], declared: list[MetricNames]) -> None:
    test_names = {name for name in emitted if not name.startswith(VALIDATION_PREFIX)}
    undeclared = sorted(name for name in test_names if not any(names.declares(name) for names in declared))
    assert not undeclared, f"emitted but not declared: {undeclared}"
    exact = {name for names in declared for name in names.exact}
    assert exact <= test_names, f"declared but not emitted: {sorted(exact - test_names)}"
    unmatched = [description for names in declared for pattern, description in names.patterns
                 if not any(pattern.fullmatch(name) for name in test_names)]
    assert not unmatched, f"declared patterns that match nothing emitted: {unmatched}"
    # the synthetic world carries validation data: each evaluation metric comes with its val/ twin
    pretraining = set(PRETRAINING_METRICS.exact)
    assert {name.removeprefix(VALIDATION_PREFIX) for name in emitted - test_names} == test_names - pretraining


def forward_once(cfg: RunConfig) -> tuple[torch.nn.Module, dict, dict]:
    family = get_family(cfg.model.family)
    torch.manual_seed(0)
    module = family.build_module(cfg).train()
    dataset = family.build_train_dataset(cfg)
    batch = family.build_collate(cfg)([dataset[i] for i in range(cfg.train.batch_size)])
    losses, metrics = module(batch)
    return module, losses, metrics


@pytest.mark.parametrize(
    ("model", "regularizers"),
    [({"family": "clip", "arch": "tiny-cnn"}, EVERY_REGULARIZER | {"inmodal": True}), (TINY_ALBEF, EVERY_REGULARIZER)],
    ids=["clip", "albef"],
)
def test_each_family_emits_exactly_the_names_it_declares(model, regularizers):
    tasks = [task for task in EVAL_TASKS if task in TWO_TOWER_METRICS or model["family"] == "albef"]
    cfg = tiny_run(model, tasks, regularizers)
    module, losses, metrics = forward_once(cfg)
    assert set(losses) == set(module.loss_names)
    assert set(metrics) == set(module.metric_names)
    emitted = get_family(cfg.model.family).evaluate(module, cfg, torch.device("cpu"))
    check_emitted_against_declared(set(emitted), declared_for(cfg))


def test_without_regularizers_a_family_emits_a_subset_of_its_loss_names():
    _, losses, _ = forward_once(tiny_run({"family": "clip", "arch": "tiny-cnn"}, ["structure"], {}))
    assert set(losses) == {"contrastive_loss"}


def test_the_metrics_the_report_names_are_declared():
    from analysis import metrics

    declared = [*TWO_TOWER_METRICS.values(), *FUSED_HEAD_METRICS.values(), PRETRAINING_METRICS]
    named = {*metrics.DOWNSTREAM_METRICS, *metrics.STRUCTURE_METRICS, *metrics.INFO_GAP_METRICS,
             *metrics.ALBEF_PRETRAINING_METRICS, metrics.SHARED_CLASS_PROBE, *metrics.MODALITY_SPECIFIC_PROBES}
    assert [name for name in sorted(named) if not any(names.declares(name) for names in declared)] == []
