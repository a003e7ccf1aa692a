"""What the analysis knows about metric names: their direction and which group they belong to.

Metric names are the project's shared contract ("zeroshot/top1", "structure/alignment", ...).
"""

from __future__ import annotations

from collections.abc import Iterable

# Downstream metrics a reader compares configurations on, in the order tables show them.
DOWNSTREAM_METRICS = (
    "zeroshot/top1",
    "zeroshot/top5",
    "retrieval/mean_recall",
    "retrieval/i2t_r1",
    "retrieval/t2i_r1",
    "linear_probe/top1",
    "kshot/k1",
    "kshot/k5",
    "kshot/k10",
    "vqa/accuracy",
    "nlvr/accuracy",
    "ve/accuracy",
)

# The latent-structure diagnostics: geometry of the embedding and what each modality keeps.
STRUCTURE_METRICS = (
    "structure/modality_gap",
    "structure/alignment",
    "structure/uniformity",
    "structure/pair_cosine",
    "linear_probe/image_only/image",
    "linear_probe/text_only/text",
    "linear_probe/image_only/image_independent",
    "linear_probe/text_only/text_independent",
    "linear_probe/image_only/image_pooled",
    "linear_probe/text_only/text_pooled",
)

# What the info-gap section tracks against alignment pressure.
INFO_GAP_METRICS = (
    "linear_probe/image_only/image",
    "linear_probe/text_only/text",
    "linear_probe/class/image",
    "zeroshot/top1",
    "retrieval/mean_recall",
)
MODALITY_SPECIFIC_PROBES = ("linear_probe/image_only/image", "linear_probe/text_only/text")

# Lower is better for these; for modality_gap and pair_cosine the paper argues against a "better"
# direction (exact alignment is not the goal), so they are never marked best.
_LOWER_IS_BETTER = ("structure/alignment", "structure/uniformity")
_NO_DIRECTION = ("structure/modality_gap", "structure/pair_cosine", "train/lr", "train/logit_scale",
                 "train/samples_per_s", "epoch", "step")

_READABLE = {
    "zeroshot/top1": "zero-shot top-1 accuracy",
    "zeroshot/top3": "zero-shot top-3 accuracy",
    "zeroshot/top5": "zero-shot top-5 accuracy",
    "retrieval/mean_recall": "retrieval mean recall",
    "linear_probe/top1": "linear-probe accuracy",
    "linear_probe/image_only/image": "image-only attribute probe (image embedding)",
    "linear_probe/text_only/text": "text-only attribute probe (text embedding)",
    "linear_probe/class/image": "shared-class probe (image embedding)",
    "structure/modality_gap": "modality gap",
    "structure/alignment": "alignment loss (lower = more aligned)",
    "structure/uniformity": "uniformity loss (lower = more uniform)",
    "structure/pair_cosine": "mean cosine of true pairs",
    "train/loss": "training loss",
}


def higher_is_better(metric: str) -> bool | None:
    """True/False for the better direction of `metric`; None when no direction is better."""
    if metric in _NO_DIRECTION:
        return None
    return not (metric in _LOWER_IS_BETTER or metric.endswith("loss") or metric.startswith("train/"))


def readable(metric: str) -> str:
    """A phrase for a metric in prose; falls back to the metric's own name."""
    return _READABLE.get(metric, metric)


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
