"""Downstream task sets: what evaluation runs a trained model on.

Images are uint8 tensors (N, 3, H, W); labels are LongTensors. Fields are empty lists or None
when a task set is not available (real data without the annotation files, for example).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

ProbeKind = Literal["shared", "image_only", "text_only"]
VE_LABELS = ("entailment", "neutral", "contradiction")


@dataclass
class ZeroShotTask:
    name: str
    classnames: list[str]
    templates: list[str]  # with one "{}" for the class name
    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class RetrievalTask:
    images: torch.Tensor  # (N, 3, H, W)
    captions: list[str]  # M >= N: each image has one or more (paraphrased) captions
    caption_to_image: torch.Tensor  # (M,) index of each caption's image


@dataclass
class ProbeTask:
    """Linear-probe / k-shot labels. `kind` says which modality carries the label's information.

    Captions may be empty lists for image-only real data sets (CIFAR, ImageNet): probe images then.
    """

    name: str
    kind: ProbeKind
    train_images: torch.Tensor
    train_captions: list[str]
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_captions: list[str]
    test_labels: torch.Tensor
    num_classes: int


@dataclass
class VQASplit:
    images: torch.Tensor
    questions: list[str]
    answers: torch.Tensor  # index into answer_vocab


@dataclass
class VQATask:
    train: VQASplit
    test: VQASplit
    answer_vocab: list[str]


@dataclass
class NLVRSplit:
    images_left: torch.Tensor
    images_right: torch.Tensor
    statements: list[str]
    labels: torch.Tensor  # 1 = the statement is true of the pair


@dataclass
class NLVRTask:
    train: NLVRSplit
    test: NLVRSplit


@dataclass
class VESplit:
    images: torch.Tensor
    hypotheses: list[str]
    labels: torch.Tensor  # 0 entailment, 1 neutral, 2 contradiction (VE_LABELS)


@dataclass
class VETask:
    train: VESplit
    test: VESplit


@dataclass
class TaskSets:
    """The test-split task sets, and the same tasks on validation data in `validation`.

    Hyperparameters are selected on validation and reported on test: evaluation reports
    `validation`'s metrics under `val/<name>` beside the test metrics' plain names. A validation
    ProbeTask keeps the test ProbeTask's training part and replaces its test part with
    validation samples, so that the two splits differ only in what is scored.
    """

    zeroshot: list[ZeroShotTask] = field(default_factory=list)
    retrieval: RetrievalTask | None = None
    probes: list[ProbeTask] = field(default_factory=list)
    vqa: VQATask | None = None
    nlvr: NLVRTask | None = None
    ve: VETask | None = None
    validation: TaskSets | None = None
