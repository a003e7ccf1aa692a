"""Downstream evaluation: metric functions on features, and the suite every family runs."""

from trainers.evaluate.metrics import (
    alignment,
    kshot_probe,
    linear_probe,
    modality_gap,
    pair_cosine,
    retrieval_recall,
    uniformity,
    zeroshot_classifier,
    zeroshot_topk,
)
from trainers.evaluate.suite import embedding_sample, evaluate_two_tower

__all__ = [
    "alignment",
    "embedding_sample",
    "evaluate_two_tower",
    "kshot_probe",
    "linear_probe",
    "modality_gap",
    "pair_cosine",
    "retrieval_recall",
    "uniformity",
    "zeroshot_classifier",
    "zeroshot_topk",
]
