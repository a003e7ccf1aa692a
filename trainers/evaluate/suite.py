"""Downstream evaluation of any two-tower model, given its two encode functions.

Every family evaluates through `evaluate_two_tower`: it encodes the task sets of
`trainers.data` in batches and computes the metrics of `EvalConfig.tasks` under the project's
metric names (zeroshot/*, retrieval/*, linear_probe/*, kshot/*, structure/*). vqa, nlvr and ve
need a fusion model and are ALBEF's own; a task whose data set is absent is skipped.

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
    kshot_probe,
    linear_probe,
    modality_gap,
    pair_cosine,
    retrieval_recall,
    uniformity,
    zeroshot_classifier,
    zeroshot_topk,
)

if TYPE_CHECKING:
    from trainers.data.tasks import ProbeTask, RetrievalTask, TaskSets, ZeroShotTask

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
    """All requested two-tower metrics, as {"zeroshot/top1": ..., "retrieval/i2t_r1": ..., ...}."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    wanted = set(eval_config.tasks)
    metrics: dict[str, float] = {}
    with torch.no_grad():
        if "zeroshot" in wanted and tasks.zeroshot:
            metrics |= zeroshot_metrics(encode_images, encode_texts, tasks.zeroshot, batch_size)
        retrieval_pairs = None
        if tasks.retrieval is not None and wanted & {"retrieval", "structure"}:
            retrieval_pairs = _encode_retrieval(encode_images, encode_texts, tasks.retrieval, batch_size)
        if "retrieval" in wanted and retrieval_pairs is not None:
            image_features, text_features = retrieval_pairs
            recalls = retrieval_recall(image_features, text_features, tasks.retrieval.caption_to_image)
            metrics |= {f"retrieval/{name}": value for name, value in recalls.items()}
        probe_features = {}
        structure_from_probes = "structure" in wanted and retrieval_pairs is None
        if tasks.probes and (wanted & {"linear_probe", "kshot"} or structure_from_probes):
            split_cache: dict[tuple, SplitFeatures] = {}
            probe_features = {
                probe.name: _encode_probe(encode_images, encode_texts, probe, batch_size, split_cache)
                for probe in tasks.probes
            }
        if "linear_probe" in wanted:
            metrics |= linear_probe_metrics(tasks.probes, probe_features)
        if "kshot" in wanted:
            metrics |= kshot_metrics(tasks.probes, probe_features, eval_config.kshot)
        if "structure" in wanted:
            metrics |= structure_metrics(*_structure_pairs(tasks, retrieval_pairs, probe_features))
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
    embeddings.npz); "text" is [0, D] when the probe has no captions (an image-only data set).
    Without such a probe (real data with only a retrieval set), the first n retrieval images and
    each one's first caption, labelled -1 (no class); with neither, empty arrays.
    """
    probe = _shared_class_probe(tasks.probes)
    if probe is not None:
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


def zeroshot_metrics(
    encode_images: ImageEncoder,
    encode_texts: TextEncoder,
    zeroshot_tasks: Sequence[ZeroShotTask],
    batch_size: int,
) -> dict[str, float]:
    """zeroshot/<set>/top{1,3,5} per set and zeroshot/top{1,3,5}, their mean over sets."""
    metrics: dict[str, float] = {}
    for task in zeroshot_tasks:
        prompts = [_fill_template(template, name) for name in task.classnames for template in task.templates]
        prompt_features = _encode_in_batches(encode_texts, prompts, batch_size)["shared"]
        classifier = zeroshot_classifier(
            prompt_features.reshape(len(task.classnames), len(task.templates), -1)  # (C, T, D)
        )
        image_features = _encode_in_batches(encode_images, task.images, batch_size)["shared"]
        accuracies = zeroshot_topk(image_features, classifier.to(image_features.device), task.labels)
        metrics |= {f"zeroshot/{task.name}/{name}": value for name, value in accuracies.items()}
    for k in (1, 3, 5):
        per_set = [metrics[f"zeroshot/{task.name}/top{k}"] for task in zeroshot_tasks]
        metrics[f"zeroshot/top{k}"] = float(np.mean(per_set))
    return metrics


def linear_probe_metrics(
    probes: Sequence[ProbeTask], probe_features: dict[str, tuple[SplitFeatures, SplitFeatures]]
) -> dict[str, float]:
    """linear_probe/<target>/<features> for every probe and feature kind, and linear_probe/top1."""
    metrics: dict[str, float] = {}
    for probe in probes:
        train, test = probe_features[probe.name]
        for feature_name, train_x in train.items():
            metrics[f"linear_probe/{probe.name}/{feature_name}"] = linear_probe(
                train_x, probe.train_labels, test[feature_name], probe.test_labels
            )
    shared_probe = _shared_class_probe(probes)
    if shared_probe is not None:
        metrics["linear_probe/top1"] = metrics[f"linear_probe/{shared_probe.name}/image"]
    return metrics


def kshot_metrics(
    probes: Sequence[ProbeTask],
    probe_features: dict[str, tuple[SplitFeatures, SplitFeatures]],
    shots: Sequence[int],
) -> dict[str, float]:
    """kshot/k<k>: the shared class from the image embedding, k samples per class, mean over draws."""
    probe = _shared_class_probe(probes)
    if probe is None:
        return {}
    train, test = probe_features[probe.name]
    return {
        f"kshot/k{k}": kshot_probe(
            train["image"], probe.train_labels, test["image"], probe.test_labels, k, KSHOT_DRAWS
        )
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


def _encode_probe(
    encode_images: ImageEncoder,
    encode_texts: TextEncoder,
    probe: ProbeTask,
    batch_size: int,
    cache: dict[tuple, SplitFeatures],
) -> tuple[SplitFeatures, SplitFeatures]:
    """Features of a probe's train and test splits. Probes of different attributes usually share
    their images and captions, so each distinct split is encoded once (`cache`, keyed by the
    image tensor's identity and the captions)."""

    def encode_split(images: Tensor, captions: Sequence[str]) -> SplitFeatures:
        key = (id(images), tuple(captions))
        if key not in cache:
            image_kinds = _encode_in_batches(encode_images, images, batch_size)
            text_kinds = _encode_in_batches(encode_texts, list(captions), batch_size)
            cache[key] = _probe_feature_names(image_kinds, "image") | _probe_feature_names(text_kinds, "text")
        return cache[key]

    return (
        encode_split(probe.train_images, probe.train_captions),
        encode_split(probe.test_images, probe.test_captions),
    )


def _encode_retrieval(
    encode_images: ImageEncoder, encode_texts: TextEncoder, retrieval: RetrievalTask, batch_size: int
) -> tuple[Tensor, Tensor]:
    image_features = _encode_in_batches(encode_images, retrieval.images, batch_size)["shared"]
    text_features = _encode_in_batches(encode_texts, list(retrieval.captions), batch_size)["shared"]
    return image_features, text_features


def _structure_pairs(
    tasks: TaskSets,
    retrieval_pairs: tuple[Tensor, Tensor] | None,
    probe_features: dict[str, tuple[SplitFeatures, SplitFeatures]],
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
    test = probe_features[probe.name][1]
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
