"""Results directories built by hand, in the layout `python -m study.run` writes, with known numbers.

`write_results_dir` writes any study; `write_ablation_study`, `write_optuna_study` and
`write_info_gap_study` write the three shapes the analysis tests use (and the study runner's tests
may reuse): their means, significant and insignificant differences are documented where built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

EPOCHS = 3


@dataclass
class TrialSpec:
    params: dict[str, Any]  # flat dotted keys, including train.seed
    final: dict[str, float]  # metrics of the last epoch
    epochs: int = EPOCHS  # epochs reported
    error: str | None = None  # error.txt text: the trial failed
    truncate_last_line: bool = False  # an interrupted write of result.json
    embeddings: dict[str, np.ndarray] | None = None
    extra_rows: list[dict[str, Any]] = field(default_factory=list)


def base_config(epochs: int = EPOCHS) -> dict[str, Any]:
    return {
        "name": "hand-built",
        "model": {"family": "clip", "arch": "tiny-vit"},
        "data": {"dataset": "synthetic", "train_size": 256, "eval_size": 512, "info_gap": 0.5},
        "train": {"epochs": epochs, "batch_size": 32, "seed": 0},
        "regularizers": {"gc": 0.0, "bb": 0.0, "dfs": 0.0, "align": 0.0},
        "eval": {"tasks": ["zeroshot", "retrieval", "linear_probe", "structure"]},
        "resources": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1.0},
    }


def epoch_rows(spec: TrialSpec, trial_id: str) -> list[dict[str, Any]]:
    """Per-epoch reports: metrics approach their final values linearly, the loss falls; Tune's keys too."""
    rows = []
    for epoch in range(1, spec.epochs + 1):
        fraction = epoch / EPOCHS
        row = {key: value * fraction for key, value in spec.final.items()}
        row.update({
            "epoch": epoch, "step": epoch * 8,
            "train/loss": 3.0 - epoch * 0.5, "train/contrastive_loss": 2.5 - epoch * 0.4,
            "training_iteration": epoch, "time_total_s": 10.0 * epoch, "time_this_iter_s": 10.0,
            "trial_id": trial_id, "done": epoch == spec.epochs, "timestamp": 1_700_000_000 + epoch,
            "config": spec.params,
        })
        rows.append(row)
    return rows + spec.extra_rows


def write_trial(trials_dir: Path, index: int, spec: TrialSpec) -> Path:
    trial_id = f"t{index:05d}"
    trial_dir = trials_dir / f"train_trial_{trial_id}_{index}_seed={spec.params.get('train.seed')}"
    trial_dir.mkdir(parents=True)
    (trial_dir / "params.json").write_text(json.dumps(spec.params))
    text = "".join(json.dumps(row) + "\n" for row in epoch_rows(spec, trial_id))
    if spec.truncate_last_line:
        text += json.dumps(epoch_rows(spec, trial_id)[-1])[:25]  # cut mid-object, as a killed writer leaves it
    (trial_dir / "result.json").write_text(text)
    if spec.error is not None:
        (trial_dir / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{spec.error}\n")
    if spec.embeddings is not None:
        np.savez(trial_dir / "embeddings.npz", **spec.embeddings)
    return trial_dir


def write_results_dir(root: Path, search: dict[str, Any], trials: list[TrialSpec],
                      base: dict[str, Any] | None = None, name: str = "hand-built",
                      hypothesis: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    study = {"name": name, "base": base or base_config(), "search": search}
    if hypothesis is not None:
        study["hypothesis"] = hypothesis
    (root / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    (root / "trials").mkdir(exist_ok=True)
    (root / "trials" / "experiment_state-2025-01-01_00-00-00.json").write_text("{}")
    for index, spec in enumerate(trials):
        write_trial(root / "trials", index, spec)
    return root


def _embeddings(seed: int, gap: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(40, 8))
    text = image + gap + 0.1 * rng.normal(size=(40, 8))
    return {"image": image, "text": text, "labels": np.arange(40) % 4}


# ----------------------------------------------------------------------------- the ablation grid

SEEDS = tuple(range(10))
ZEROSHOT = "zeroshot/synthetic_shapes/top1"
BASELINE_TOP1 = tuple(0.40 + 0.01 * (i % 3) for i in SEEDS)
# GC: +0.09..+0.11 on every seed: exact two-sided p = 2/2^10; Holm over the downstream table's m = 4 -> 0.0078
GC_GAIN = tuple(0.10 + 0.01 * ((i % 3) - 1) for i in SEEDS)
DFS_GAIN = tuple((0.03, -0.02, 0.00)[i % 3] for i in SEEDS)  # not significant
RECALL = tuple(0.30 + 0.01 * ((i % 3) - 1) for i in SEEDS)  # the same for every configuration: Δ 0, p = 1
# Validation favours +DFS (by 0.2), which the test split does not: the report must select on validation.
VAL_DFS_BONUS = 0.2
CLASS_PROBE = 0.8  # the shared-class probe: far above chance (1/8)


def ablation_trials(class_probe: float = CLASS_PROBE) -> list[TrialSpec]:
    """The 2x2 on/off grid of DFS and GC, 10 seeds. +DFS+GC: seed 1 stopped after one epoch, seed 2
    failed. The baseline's seed 2 result.json ends in a truncated line."""
    specs = []
    for dfs, gc in ((0.0, 0.0), (1.0, 0.0), (0.0, 0.5), (1.0, 0.5)):
        for index, seed in enumerate(SEEDS):
            top1 = BASELINE_TOP1[index] + (GC_GAIN[index] if gc else 0.0) + (DFS_GAIN[index] if dfs else 0.0)
            final = {ZEROSHOT: top1, f"val/{ZEROSHOT}": top1 + (VAL_DFS_BONUS if dfs and not gc else 0.0),
                     "retrieval/mean_recall": RECALL[index],
                     "structure/alignment": 1.0 - (0.3 if gc else 0.0) + 0.01 * (index % 3),
                     "structure/modality_gap": 0.8 - 0.1 * (index % 3),
                     "linear_probe/image_only/image": 0.6 + (0.05 if dfs else 0.0) + 0.01 * (index % 3),
                     "linear_probe/class/image": class_probe + 0.002 * (index % 3)}
            spec = TrialSpec({"regularizers.dfs": dfs, "regularizers.gc": gc, "train.seed": seed}, final)
            if dfs and gc and seed == 1:
                spec.epochs = 1
            if dfs and gc and seed == 2:
                spec.epochs, spec.error = 2, "RuntimeError: CUDA out of memory (simulated)"
            if not dfs and not gc and seed == 2:
                spec.truncate_last_line = True
            if seed == 0 and not dfs:
                spec.embeddings = _embeddings(seed, gap=1.0 if not gc else 0.3)
            specs.append(spec)
    return specs


def ablation_search() -> dict[str, Any]:
    return {
        "method": "grid", "metric": ZEROSHOT, "mode": "max", "num_samples": 1, "seeds": list(SEEDS),
        "space": {"regularizers.dfs": {"type": "choice", "values": [0.0, 1.0]},
                  "regularizers.gc": {"type": "choice", "values": [0.0, 0.5]}},
        "scheduler": {"type": "none"},
    }


def write_ablation_study(root: Path, class_probe: float = CLASS_PROBE) -> Path:
    return write_results_dir(root, ablation_search(), ablation_trials(class_probe), name="ablation")


# ----------------------------------------------------------------------------- an optuna search

OPTUNA_WEIGHTS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)


def optuna_top1(weight: float, seed: int) -> float:
    """A known response: best near GC weight 0.3."""
    return 0.5 - 0.05 * (np.log10(weight + 1e-3) - np.log10(0.3)) ** 2 / 4 + 0.005 * seed


def write_optuna_study(root: Path) -> Path:
    """Six GC weights (0 = the baseline) x 2 seeds as Tune trials, and the matching optuna.db."""
    import optuna

    seeds = (0, 1)
    specs = [
        TrialSpec({"regularizers.gc": weight, "train.seed": seed},
                  {ZEROSHOT: optuna_top1(weight, seed), f"val/{ZEROSHOT}": optuna_top1(weight, seed),
                   "structure/alignment": 1.0 / (1.0 + weight)})
        for weight in OPTUNA_WEIGHTS for seed in seeds
    ]
    search = {"method": "optuna", "metric": ZEROSHOT, "mode": "max", "num_samples": len(OPTUNA_WEIGHTS),
              "seeds": list(seeds),
              "space": {"regularizers.gc": {"type": "loguniform", "low": 0.01, "high": 10.0}},
              "scheduler": {"type": "none"}}
    write_results_dir(root, search, specs, name="gc-optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="gc-optuna", storage=f"sqlite:///{root / 'optuna.db'}",
                                direction="maximize")
    distribution = optuna.distributions.FloatDistribution(1e-3, 10.0, log=True)
    for weight in OPTUNA_WEIGHTS:
        study.add_trial(optuna.trial.create_trial(
            params={"regularizers.gc": max(weight, 1e-3), "regularizers.dfs": 0.1 * weight},
            distributions={"regularizers.gc": distribution,
                           "regularizers.dfs": optuna.distributions.FloatDistribution(0.0, 1.0)},
            value=float(np.mean([optuna_top1(weight, seed) for seed in seeds])),
        ))
    return root


# ----------------------------------------------------------------------------- an info-gap study

INFO_GAP_SEEDS = tuple(range(100, 108))
PROBES = ("linear_probe/image_only/image", "linear_probe/text_only/text")


def info_gap_probe(gap: float, align: float, gc: float, seed: int, interaction: bool = True) -> float:
    """The predicted effect, by construction: alignment pressure lowers the modality-specific probes by
    0.3 x gap x align (without `interaction`: by 0.1 x align at every gap), GC recovers a third of it;
    noise (sd 0.01) differs per seed and cell."""
    noise = 0.01 * np.random.default_rng([seed, int(10 * gap), int(10 * align), int(10 * gc)]).normal()
    loss = (0.3 * gap if interaction else 0.1) * align * (1.0 - (1 / 3 if gc else 0.0))
    return 0.9 - loss + noise


def info_gap_hypothesis() -> dict[str, Any]:
    def cell(gap: float, align: float, gc: float | None = None) -> dict[str, float]:
        return {"data.info_gap": gap, "regularizers.align": align, **({"regularizers.gc": gc} if gc else {})}

    return {
        "statement": "pressure costs the modality-specific probes more at gap 1 than at gap 0",
        "power_effect": 1.0,
        "primary": {"name": "gap x pressure interaction", "metrics": list(PROBES), "alternative": "less",
                    "effect": {"treated": cell(1.0, 1.0), "reference": cell(1.0, 0.0)},
                    "minus": {"treated": cell(0.0, 1.0), "reference": cell(0.0, 0.0)}},
        "secondary": [{"name": "GC under pressure vs pressure alone (gap 1)", "metrics": list(PROBES),
                       "alternative": "greater",
                       "effect": {"treated": cell(1.0, 1.0, 0.5), "reference": cell(1.0, 1.0)}}],
    }


def write_info_gap_study(root: Path, interaction: bool = True, class_probe: float = 0.95,
                         preregistered: bool = True) -> Path:
    """gap {0, 1} x align {0, 1} x GC {0, 0.5} x 8 seeds; the shared-class probe at `class_probe`."""
    specs = []
    for gap in (0.0, 1.0):
        for align in (0.0, 1.0):
            for gc in (0.0, 0.5):
                for seed in INFO_GAP_SEEDS:
                    probe = info_gap_probe(gap, align, gc, seed, interaction)
                    final = {PROBES[0]: probe, PROBES[1]: probe - 0.02,
                             "linear_probe/class/image": class_probe + 0.001 * (seed % 3),
                             ZEROSHOT: 0.7 + 0.002 * (seed % 5), f"val/{ZEROSHOT}": 0.7 + 0.002 * (seed % 5),
                             "retrieval/mean_recall": 0.5 + 0.05 * align + 0.003 * (seed % 5)}
                    params = {"data.info_gap": gap, "regularizers.align": align, "regularizers.gc": gc,
                              "train.seed": seed}
                    specs.append(TrialSpec(params, final))
    search = {"method": "grid", "metric": "linear_probe/image_only/image", "mode": "max", "num_samples": 1,
              "seeds": list(INFO_GAP_SEEDS),
              "space": {"data.info_gap": {"type": "choice", "values": [0.0, 1.0]},
                        "regularizers.align": {"type": "choice", "values": [0.0, 1.0]},
                        "regularizers.gc": {"type": "choice", "values": [0.0, 0.5]}},
              "scheduler": {"type": "none"}}
    return write_results_dir(root, search, specs, name="info-gap",
                             hypothesis=info_gap_hypothesis() if preregistered else None)
