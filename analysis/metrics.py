"""What the analysis knows about metric names: their direction and which group they belong to.

Metric names are the project's shared contract ("zeroshot/<set>/top1", "structure/alignment", ...).
Every evaluation metric also comes as `val/<name>`, measured on validation data: selection uses those,
tables report the plain (test) names. Zero-shot is per set: a mean over sets would mix sets at chance
with sets that are learnt, so no table shows one.
"""

from __future__ import annotations

from collections.abc import Iterable

from trainers.albef.names import FUSED_HEAD_METRICS, FUSED_HEADS, PRETRAINING_METRICS, TRAINED_FLAG
from trainers.evaluate.names import TWO_TOWER_METRICS, VALIDATION_PREFIX

# ALBEF's fused heads: each accuracy beside its text-only control and the margin between the two, which is
# what the image adds (as trainers/albef/names.py declares them).
ALBEF_HEADS = FUSED_HEADS
ALBEF_HEAD_METRICS = tuple(name for head in ALBEF_HEADS for name in FUSED_HEAD_METRICS[head].exact)
# Shown beside the outcomes but not compared between configurations, so not in any Holm family: a head's
# text-only control is the yardstick its margin is measured against, and a standard error is the margin's
# uncertainty; neither is an outcome a regularizer should move.
NOT_COMPARED = tuple(f"{head}/{name}" for head in ALBEF_HEADS for name in ("text_only_accuracy", "image_margin_se"))
# ALBEF pre-training's end state: running ITC beside its chance value ln(B + Q), ITM accuracy beside its 2/3
# prior, the cosine between online and momentum features (what GC / BB compare against: ALBEF's views), and
# albef/trained (1/0): 0 marks a trial whose ITC is not below chance or whose ITM is at its prior, which a
# report should list as "not trained" and leave out of comparisons.
ALBEF_TRAINED_FLAG = TRAINED_FLAG
ALBEF_PRETRAINING_METRICS = PRETRAINING_METRICS.exact

# Downstream metrics a reader compares configurations on, in the order tables show them (after the
# per-set zero-shot accuracies, see `downstream_metrics`). Every name here is one the evaluation declares
# (tests/test_metric_names.py checks).
DOWNSTREAM_METRICS = (
    "retrieval/mean_recall",
    "retrieval/i2t_r1",
    "retrieval/t2i_r1",
    "linear_probe/top1",
    "kshot/k1",
    "kshot/k5",
    "kshot/k10",
    *ALBEF_HEAD_METRICS,
)

# The latent-structure diagnostics: geometry of the embedding and what each modality keeps.
STRUCTURE_METRICS = (
    *TWO_TOWER_METRICS["structure"].exact,
    "linear_probe/image_only/image",
    "linear_probe/text_only/text",
    "linear_probe/image_only/image_independent",
    "linear_probe/text_only/text_independent",
    "linear_probe/image_only/image_pooled",
    "linear_probe/text_only/text_pooled",
)

# What the info-gap section tracks against alignment pressure (with the per-set zero-shot accuracies).
INFO_GAP_PROBES = (
    "linear_probe/image_only/image",
    "linear_probe/text_only/text",
    "linear_probe/class/image",
)
INFO_GAP_METRICS = (*INFO_GAP_PROBES, "retrieval/mean_recall")
MODALITY_SPECIFIC_PROBES = ("linear_probe/image_only/image", "linear_probe/text_only/text")
SHARED_CLASS_PROBE = "linear_probe/class/image"

# Lower is better for these; for modality_gap and pair_cosine the paper argues against a "better"
# direction (exact alignment is not the goal), so they are never marked best.
_LOWER_IS_BETTER = ("structure/alignment", "structure/uniformity")
_NO_DIRECTION = ("structure/modality_gap", "structure/pair_cosine", "train/lr", "train/logit_scale",
                 "train/samples_per_s", "epoch", "step", "albef/itc_chance", "albef/itm_prior_accuracy",
                 "albef/momentum_cosine", ALBEF_TRAINED_FLAG, *NOT_COMPARED)

_READABLE = {
    "retrieval/mean_recall": "retrieval mean recall",
    "linear_probe/top1": "linear-probe accuracy",
    "linear_probe/image_only/image": "image-side gap probe: colour (image embedding)",
    "linear_probe/text_only/text": "text-side gap probe: owner (text embedding)",
    "linear_probe/class/image": "shared-class probe (image embedding)",
    "structure/modality_gap": "modality gap",
    "structure/alignment": "alignment loss (lower = more aligned)",
    "structure/uniformity": "uniformity loss (lower = more uniform)",
    "structure/pair_cosine": "mean cosine of true pairs",
    "train/loss": "training loss",
    **{f"{head}/text_only_accuracy": f"{head.upper()} accuracy of the text-only control" for head in ALBEF_HEADS},
    **{f"{head}/image_margin": f"{head.upper()} accuracy minus its text-only control" for head in ALBEF_HEADS},
    **{f"{head}/image_margin_se": f"standard error of the {head.upper()} margin over test examples"
       for head in ALBEF_HEADS},
    "albef/itc_loss": "ALBEF ITC loss at the end of pre-training",
    "albef/itc_chance": "ITC chance value ln(B + Q)",
    "albef/itm_accuracy": "ALBEF ITM accuracy at the end of pre-training",
    "albef/momentum_cosine": "cosine between online and momentum features (the regularizers' views)",
    ALBEF_TRAINED_FLAG: "pre-training linked images and texts (1) or not (0)",
}


def higher_is_better(metric: str) -> bool | None:
    """True/False for the better direction of `metric`; None when no direction is better."""
    if metric in _NO_DIRECTION:
        return None
    return not (metric in _LOWER_IS_BETTER or metric.endswith("loss") or metric.startswith("train/"))


def readable(metric: str) -> str:
    """A phrase for a metric in prose; falls back to the metric's own name."""
    parts = metric.split("/")
    if len(parts) == 3 and parts[0] == "zeroshot" and parts[2].startswith("top"):
        return f"zero-shot {parts[2].replace('top', 'top-')} accuracy on {parts[1]}"
    return _READABLE.get(metric, metric)


def validation_name(metric: str) -> str:
    """The validation twin of a test metric: `val/<metric>`."""
    return f"{VALIDATION_PREFIX}{metric}"


def zeroshot_metrics(columns: Iterable[str]) -> list[str]:
    """zeroshot/<set>/top1 for every set present, sorted by set."""
    return [f"zeroshot/{name}/top1" for name in zeroshot_sets(columns)]


def downstream_metrics(columns: Iterable[str], primary: str | None = None) -> list[str]:
    """The table's test metrics: the study's primary metric, zero-shot per set, then the rest present."""
    columns = list(columns)
    candidates = [primary] if primary else []
    return list(dict.fromkeys(present([*candidates, *zeroshot_metrics(columns), *DOWNSTREAM_METRICS], columns)))


def info_gap_metrics(columns: Iterable[str]) -> list[str]:
    columns = list(columns)
    return present([*INFO_GAP_PROBES, *zeroshot_metrics(columns), "retrieval/mean_recall"], columns)


def present(candidates: Iterable[str], columns: Iterable[str]) -> list[str]:
    """The candidates that are columns, in the candidates' order."""
    available = set(columns)
    return [metric for metric in candidates if metric in available]


def zeroshot_sets(columns: Iterable[str]) -> list[str]:
    """Names of the zero-shot data sets that have a per-set top-1 column (zeroshot/<set>/top1)."""
    names = []
    for column in columns:
        parts = column.split("/")
        if len(parts) == 3 and parts[0] == "zeroshot" and parts[2] == "top1":
            names.append(parts[1])
    return sorted(names)
