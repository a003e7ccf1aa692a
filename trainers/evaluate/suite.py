"""Downstream evaluation of any two-tower model, given its two encode functions.

Every family evaluates through `evaluate_two_tower`: it encodes the task sets of
`trainers.data` in batches and computes the metrics of `EvalConfig.tasks` under the project's
metric names (zeroshot/<set>/*, retrieval/*, linear_probe/*, kshot/*, structure/*). vqa, nlvr and ve
need a fusion model and are ALBEF's own; a task whose data set is absent is skipped. When the task
sets carry validation data (`TaskSets.validation`), the same metrics on it are reported as
`val/<name>`: studies select on those and report the plain (test) ones.

Each image tensor and each caption is encoded once per evaluation (`FeatureCache`): a split's tasks
share their images, and the validation probes share the test probes' training part, whose fitted
probes then score both splits.

An encode function maps a batch (uint8 images `[B, 3, H, W]`, or a list of strings) to feature
kinds: "shared" (the normalized embedding, required), optionally "independent" (DFS heads,
normalized) and "pooled" (encoder output before projection).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from trainers.config import EvalConfig
from trainers.evaluate.metrics import (
    alignment,
    fit_kshot_probes,
    fit_linear_probe,
    modality_gap,
    pair_cosine,
    probe_accuracy,
    retrieval_recall,
    uniformity,
    zeroshot_classifier,
    zeroshot_topk,
)
from trainers.evaluate.names import VALIDATION_PREFIX

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from trainers.data.tasks import ProbeTask, TaskSets, ZeroShotTask

ImageEncoder = Callable[[Tensor], dict[str, Tensor]]
TextEncoder = Callable[[list[str]], dict[str, Tensor]]

# uniformity's pairwise distances grow as N^2: 4096 pairs keep them at 8M floats.
MAX_STRUCTURE_PAIRS = 4096
KSHOT_DRAWS = 5


# Features of one data split by probe feature name ("image", "text_independent", ...).
SplitFeatures = dict[str, Tensor]


def evaluate_two_tower(
    encode_images: ImageEncoder,
    encode_texts: TextEncoder,
    tasks: TaskSets,
    eval_config: EvalConfig,
    batch_size: int = 256,
) -> dict[str, float]:
    """All requested two-tower metrics on the test sets, as {"zeroshot/<set>/top1": ...,
    "retrieval/i2t_r1": ..., ...}, and the same on `tasks.validation` as {"val/zeroshot/<set>/top1": ...}."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    features = FeatureCache(encode_images, encode_texts, batch_size)
    probes = _ProbeFits()
    # linear_probe/top1 and kshot/* follow the test split's shared-class probe on both splits
    shared = _shared_class_probe(tasks.probes)
    shared_name = shared.name if shared is not None else None
    with torch.no_grad():
        metrics = _split_metrics(tasks, eval_config, features, probes, shared_name)
        if tasks.validation is not None:
            validation = _split_metrics(tasks.validation, eval_config, features, probes, shared_name)
            metrics |= {f"{VALIDATION_PREFIX}{name}": value for name, value in validation.items()}
    return metrics


def _split_metrics(
    tasks: TaskSets, eval_config: EvalConfig, features: FeatureCache, probes: _ProbeFits, shared_name: str | None
) -> dict[str, float]:
    wanted = set(eval_config.tasks)
    metrics: dict[str, float] = {}
    if "zeroshot" in wanted and tasks.zeroshot:
        metrics |= zeroshot_metrics(features, tasks.zeroshot)
    retrieval_pairs = None
    if tasks.retrieval is not None and wanted & {"retrieval", "structure"}:
        retrieval_pairs = (features.images(tasks.retrieval.images)["shared"],
                           features.texts(tasks.retrieval.captions)["shared"])
    if "retrieval" in wanted and retrieval_pairs is not None:
        recalls = retrieval_recall(*retrieval_pairs, tasks.retrieval.caption_to_image)
        metrics |= {f"retrieval/{name}": value for name, value in recalls.items()}
    if "linear_probe" in wanted:
        metrics |= linear_probe_metrics(tasks.probes, features, probes, shared_name)
    if "kshot" in wanted:
        metrics |= kshot_metrics(tasks.probes, features, probes, eval_config.kshot, shared_name)
    if "structure" in wanted:
        metrics |= structure_metrics(*_structure_pairs(tasks, retrieval_pairs, features))
    return metrics


def embedding_sample(
    encode_images: ImageEncoder,
    encode_texts: TextEncoder,
    tasks: TaskSets,
    n: int = 512,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Shared embeddings of the first n test pairs of the shared-class probe, for the PCA plot.

    Returns {"image": [n, D], "text": [n, D], "labels": [n]} (what the trainer saves as
    embeddings.npz). When that probe has no captions (an image-only zero-shot set) and a retrieval
    set exists, the first n retrieval images and each one's first caption, labelled -1 (no class),
    since the plot is about where the two modalities lie; with only an image-only probe, "text" is
    [0, D]; with neither, empty arrays.
    """
    probe = _shared_class_probe(tasks.probes)
    if probe is not None and (len(probe.test_captions) > 0 or tasks.retrieval is None):
        sample_images, sample_captions, labels = probe.test_images[:n], list(probe.test_captions[:n]), \
            probe.test_labels[:n]
    elif tasks.retrieval is not None:
        sample_images = tasks.retrieval.images[:n]
        first_caption: dict[int, int] = {}
        for caption, image in enumerate(tasks.retrieval.caption_to_image.tolist()):
            first_caption.setdefault(image, caption)
        sample_captions = [tasks.retrieval.captions[first_caption[i]] for i in range(len(sample_images))]
        labels = torch.full((len(sample_images),), -1)
    else:  # nothing to sample: an empty sample, which the report skips, rather than a failed run
        return {"image": np.zeros((0, 0), np.float32), "text": np.zeros((0, 0), np.float32),
                "labels": np.zeros(0, np.int64)}
    with torch.no_grad():
        images = _encode_in_batches(encode_images, sample_images, batch_size)["shared"]
        text_kinds = _encode_in_batches(encode_texts, sample_captions, batch_size)
        texts = text_kinds.get("shared", images.new_zeros(0, images.shape[1]))
    return {
        "image": images.float().cpu().numpy(),
        "text": texts.float().cpu().numpy(),
        "labels": torch.as_tensor(labels).cpu().numpy(),
    }


# --------------------------------------------------------------------------- per task


def zeroshot_metrics(features: FeatureCache, zeroshot_tasks: Sequence[ZeroShotTask]) -> dict[str, float]:
    """zeroshot/<set>/top{1,3,5} per set. Never averaged across sets: sets differ in difficulty and
    chance level, so a mean would hide which one moved."""
    metrics: dict[str, float] = {}
    for task in zeroshot_tasks:
        prompts = [_fill_template(template, name) for name in task.classnames for template in task.templates]
        prompt_features = features.texts(prompts)["shared"]
        classifier = zeroshot_classifier(
            prompt_features.reshape(len(task.classnames), len(task.templates), -1)  # (C, T, D)
        )
        image_features = features.images(task.images)["shared"]
        accuracies = zeroshot_topk(image_features, classifier.to(image_features.device), task.labels)
        metrics |= {f"zeroshot/{task.name}/{name}": value for name, value in accuracies.items()}
    return metrics


def linear_probe_metrics(
    probes: Sequence[ProbeTask], features: FeatureCache, fits: _ProbeFits, shared_name: str | None
) -> dict[str, float]:
    """linear_probe/<target>/<features> for every probe and feature kind, and linear_probe/top1: the
    image embedding's accuracy on the probe `shared_name` (the shared class), when present."""
    metrics: dict[str, float] = {}
    for probe in probes:
        train, test = _probe_features(features, probe)
        for feature_name, train_x in train.items():
            fitted = fits.linear(probe, feature_name, train_x)
            metrics[f"linear_probe/{probe.name}/{feature_name}"] = probe_accuracy(
                fitted, test[feature_name], probe.test_labels
            )
    if f"linear_probe/{shared_name}/image" in metrics:
        metrics["linear_probe/top1"] = metrics[f"linear_probe/{shared_name}/image"]
    return metrics


def kshot_metrics(
    probes: Sequence[ProbeTask], features: FeatureCache, fits: _ProbeFits, shots: Sequence[int], shared_name: str | None
) -> dict[str, float]:
    """kshot/k<k>: the shared class (probe `shared_name`) from the image embedding, k samples per class,
    mean over draws."""
    probe = next((probe for probe in probes if probe.name == shared_name), None)
    if probe is None:
        return {}
    train, test = _probe_features(features, probe)
    return {
        f"kshot/k{k}": float(np.mean([
            probe_accuracy(fitted, test["image"], probe.test_labels)
            for fitted in fits.kshot(probe, "image", train["image"], k)
        ]))
        for k in shots
    }


def structure_metrics(image_features: Tensor, text_features: Tensor) -> dict[str, float]:
    """structure/* of true (image, caption) pairs; uniformity is the mean of the two modalities'."""
    if image_features.shape[0] == 0:
        return {}
    image_features, text_features = image_features[:MAX_STRUCTURE_PAIRS], text_features[:MAX_STRUCTURE_PAIRS]
    return {
        "structure/modality_gap": modality_gap(image_features, text_features),
        "structure/alignment": alignment(image_features, text_features, alpha=2.0),
        "structure/uniformity": (uniformity(image_features, t=2.0) + uniformity(text_features, t=2.0)) / 2,
        "structure/pair_cosine": pair_cosine(image_features, text_features),
    }


# --------------------------------------------------------------------------- encoding


class FeatureCache:
    """Encoded features of the evaluation's images and captions, each encoded once.

    Images are keyed by the tensor's identity (the task sets of a split share one tensor; the cache
    holds a reference, so an identity is never reused while it lives), captions by their text (the
    first retrieval paraphrase is the probes' caption, and prompts recur across splits).
    """

    def __init__(self, encode_images: ImageEncoder, encode_texts: TextEncoder, batch_size: int) -> None:
        self.encode_images, self.encode_texts, self.batch_size = encode_images, encode_texts, batch_size
        self._images: dict[int, tuple[Tensor, dict[str, Tensor]]] = {}
        self._text_rows: dict[str, int] = {}
        self._text_parts: dict[str, list[Tensor]] = {}
        self._text_features: dict[str, Tensor] = {}

    def images(self, images: Tensor) -> dict[str, Tensor]:
        if id(images) not in self._images:
            self._images[id(images)] = (images, _encode_in_batches(self.encode_images, images, self.batch_size))
        return self._images[id(images)][1]

    def texts(self, texts: Sequence[str]) -> dict[str, Tensor]:
        if len(texts) == 0:
            return {}
        new = [text for text in dict.fromkeys(texts) if text not in self._text_rows]
        if new:
            for kind, encoded in _encode_in_batches(self.encode_texts, new, self.batch_size).items():
                self._text_parts.setdefault(kind, []).append(encoded)
            self._text_rows |= {text: len(self._text_rows) + i for i, text in enumerate(new)}
            self._text_features = {kind: torch.cat(parts) for kind, parts in self._text_parts.items()}
        rows = torch.tensor([self._text_rows[text] for text in texts])
        return {kind: stored[rows.to(stored.device)] for kind, stored in self._text_features.items()}

    def probe_split(self, images: Tensor, captions: Sequence[str]) -> SplitFeatures:
        """One probe split's features under probe feature names (image, text_independent, ...)."""
        return _probe_feature_names(self.images(images), "image") | _probe_feature_names(self.texts(captions), "text")


class _ProbeFits:
    """Probes fitted once per training part, feature kind and labels: the validation probes keep the
    test probes' training part, so each fit scores both splits."""

    def __init__(self) -> None:
        self._fits: dict[tuple, Pipeline | list[Pipeline]] = {}

    def _key(self, probe: ProbeTask, feature_name: str, *extra: object) -> tuple:
        labels = torch.as_tensor(probe.train_labels).cpu().numpy().tobytes()
        return (id(probe.train_images), tuple(probe.train_captions), labels, feature_name, *extra)

    def linear(self, probe: ProbeTask, feature_name: str, train_x: Tensor) -> Pipeline:
        key = self._key(probe, feature_name)
        if key not in self._fits:
            self._fits[key] = fit_linear_probe(train_x, probe.train_labels)
        return self._fits[key]

    def kshot(self, probe: ProbeTask, feature_name: str, train_x: Tensor, k: int) -> list[Pipeline]:
        key = self._key(probe, feature_name, "kshot", k)
        if key not in self._fits:
            self._fits[key] = fit_kshot_probes(train_x, probe.train_labels, k, KSHOT_DRAWS)
        return self._fits[key]


def _encode_in_batches(
    encode: Callable[[Tensor | list[str]], dict[str, Tensor]], items: Tensor | list[str], batch_size: int
) -> dict[str, Tensor]:
    """Run `encode` over `items` in batches and concatenate each feature kind; {} for no items."""
    if len(items) == 0:
        return {}
    pieces: dict[str, list[Tensor]] = {}
    for start in range(0, len(items), batch_size):
        for kind, features in encode(items[start : start + batch_size]).items():
            pieces.setdefault(kind, []).append(features)
    if "shared" not in pieces:
        raise ValueError(f"encode function returned kinds {sorted(pieces)}; 'shared' is required")
    return {kind: torch.cat(parts) for kind, parts in pieces.items()}


def _probe_feature_names(features: dict[str, Tensor], modality: str) -> dict[str, Tensor]:
    """Encoder kinds -> probe feature names: shared -> image, independent -> image_independent, ..."""
    if not features:
        return {}
    named = {modality: features["shared"]}
    if "independent" in features:
        named[f"{modality}_independent"] = features["independent"]
        named[f"{modality}_concat"] = torch.cat([features["shared"], features["independent"]], dim=1)
    if "pooled" in features:
        named[f"{modality}_pooled"] = features["pooled"]
    return named


def _probe_features(features: FeatureCache, probe: ProbeTask) -> tuple[SplitFeatures, SplitFeatures]:
    return (features.probe_split(probe.train_images, probe.train_captions),
            features.probe_split(probe.test_images, probe.test_captions))


def _structure_pairs(
    tasks: TaskSets, retrieval_pairs: tuple[Tensor, Tensor] | None, features: FeatureCache
) -> tuple[Tensor, Tensor]:
    """True pairs for the structure metrics: each retrieval image with its first caption, else the
    test split of the shared-class (or first) probe."""
    if retrieval_pairs is not None:
        image_features, text_features = retrieval_pairs
        first_caption = _first_caption_of_each_image(tasks.retrieval.caption_to_image, len(image_features))
        has_caption = first_caption >= 0
        caption_ids = first_caption[has_caption].to(text_features.device)
        return image_features[has_caption.to(image_features.device)], text_features[caption_ids]
    if not tasks.probes:
        return torch.zeros(0, 1), torch.zeros(0, 1)
    probe = _shared_class_probe(tasks.probes) or tasks.probes[0]
    test = features.probe_split(probe.test_images, probe.test_captions)
    if "text" not in test:  # an image-only data set has no pairs
        return torch.zeros(0, 1), torch.zeros(0, 1)
    return test["image"], test["text"]


def _first_caption_of_each_image(caption_to_image: Tensor, num_images: int) -> Tensor:
    """Index of each image's lowest-numbered caption, -1 for an image without captions."""
    num_captions = caption_to_image.shape[0]
    caption_ids = torch.arange(num_captions, device=caption_to_image.device)
    first = torch.full((num_images,), num_captions, dtype=torch.long, device=caption_to_image.device)
    first = first.scatter_reduce(0, caption_to_image, caption_ids, reduce="amin")
    return torch.where(first == num_captions, -1, first)


def _shared_class_probe(probes: Sequence[ProbeTask]) -> ProbeTask | None:
    return next((probe for probe in probes if probe.kind == "shared"), None)


def _fill_template(template: str | Callable[[str], str], classname: str) -> str:
    return template.format(classname) if isinstance(template, str) else template(classname)
