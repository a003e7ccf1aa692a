"""Evaluation metrics as pure functions of feature tensors.

Features are L2-normalized `[N, D]` tensors unless a function says otherwise; every function
works on whatever device its inputs live on and returns plain Python floats. Retrieval and
zero-shot scoring walk the similarity matrix in row chunks, keeping only a running top-k, so a
COCO-sized 5k x 25k retrieval needs one pass over the matrix and bounded memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import Tensor

# Rows of the similarity matrix scored at once: 1024 x 25k floats is ~100 MB.
DEFAULT_CHUNK_SIZE = 1024


# --------------------------------------------------------------------------- zero-shot


def zeroshot_classifier(class_text_features: Tensor) -> Tensor:
    """Class weights `[C, D]` from normalized template embeddings `[C, T, D]`.

    The mean over templates, renormalized: open_clip's `build_zero_shot_classifier`, whose
    maths is these two lines; it cannot be reused because it calls `model.encode_text` on
    tokens itself, while our families hand us features (ALBEF has no open_clip model).
    """
    if class_text_features.ndim != 3:
        shape = tuple(class_text_features.shape)
        raise ValueError(f"class_text_features: expected [classes, templates, dim], got {shape}")
    class_means = class_text_features.float().mean(dim=1)  # (C, D)
    return torch.nn.functional.normalize(class_means, dim=-1)


def zeroshot_topk(
    image_features: Tensor,
    classifier: Tensor,
    labels: Tensor,
    ks: Sequence[int] = (1, 3, 5),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Top-k accuracy of `argmax <image, class>`: {"top1": ..., "top3": ..., "top5": ...}.

    A k larger than the number of classes is clipped to it (so top-5 of a 3-way task is 1).
    """
    if image_features.shape[0] != labels.shape[0]:
        raise ValueError(f"labels: {labels.shape[0]} labels for {image_features.shape[0]} images")
    num_classes = classifier.shape[0]
    max_k = min(max(ks), num_classes)
    classifier = classifier.float()
    labels = labels.to(image_features.device)
    correct_at = torch.zeros(len(ks), dtype=torch.long)
    for start in range(0, image_features.shape[0], chunk_size):
        logits = image_features[start : start + chunk_size].float() @ classifier.T  # (c, C)
        predicted = logits.topk(max_k, dim=1).indices  # (c, k)
        is_label = predicted == labels[start : start + chunk_size, None]
        for slot, k in enumerate(ks):
            correct_at[slot] += int(is_label[:, : min(k, num_classes)].any(dim=1).sum())
    num_images = max(image_features.shape[0], 1)
    return {f"top{k}": float(correct_at[slot]) / num_images for slot, k in enumerate(ks)}


# --------------------------------------------------------------------------- retrieval


def retrieval_recall(
    image_features: Tensor,
    text_features: Tensor,
    caption_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Recall@k in both directions, plus their mean: {"i2t_r1", ..., "t2i_r10", "mean_recall"}.

    image -> text counts a hit when ANY of the image's captions is among its top k captions, and
    averages over the images that have at least one caption; text -> image asks whether the
    caption's own image is among its top k images. Each chunk of image rows is scored once and
    serves both directions: i2t takes the row top-k, t2i merges the chunk's column top-k into a
    running `[k, M]` top-k, so the cost is one pass over the N x M similarities.
    """
    num_images, num_captions = image_features.shape[0], text_features.shape[0]
    _check_caption_to_image(caption_to_image, num_images, num_captions)
    device = image_features.device
    caption_to_image = caption_to_image.to(device)
    text_features = text_features.float()
    k_i2t, k_t2i = min(max(ks), num_captions), min(max(ks), num_images)

    i2t_hits = torch.zeros(num_images, len(ks), dtype=torch.bool, device=device)
    best_scores = torch.full((k_t2i, num_captions), -torch.inf, device=device)
    best_images = torch.zeros((k_t2i, num_captions), dtype=torch.long, device=device)
    for start in range(0, num_images, chunk_size):
        chunk = image_features[start : start + chunk_size].float()
        similarity = chunk @ text_features.T  # (c, M)
        row_ids = torch.arange(start, start + chunk.shape[0], device=device)

        top_captions = similarity.topk(k_i2t, dim=1).indices  # (c, k)
        is_own_caption = caption_to_image[top_captions] == row_ids[:, None]
        for slot, k in enumerate(ks):
            i2t_hits[row_ids, slot] = is_own_caption[:, : min(k, num_captions)].any(dim=1)

        chunk_scores, chunk_rows = similarity.topk(min(k_t2i, chunk.shape[0]), dim=0)  # (k', M)
        merged_scores = torch.cat([best_scores, chunk_scores])
        merged_images = torch.cat([best_images, chunk_rows + start])
        best_scores, order = merged_scores.topk(k_t2i, dim=0)
        best_images = merged_images.gather(0, order)

    has_caption = torch.bincount(caption_to_image, minlength=num_images) > 0
    is_own_image = best_images == caption_to_image[None, :]  # (k, M)
    recalls = {}
    for slot, k in enumerate(ks):
        recalls[f"i2t_r{k}"] = float(i2t_hits[has_caption, slot].float().mean())
    for k in ks:
        recalls[f"t2i_r{k}"] = float(is_own_image[: min(k, num_images)].any(dim=0).float().mean())
    recalls["mean_recall"] = sum(recalls.values()) / len(recalls)
    return recalls


def _check_caption_to_image(caption_to_image: Tensor, num_images: int, num_captions: int) -> None:
    if num_images == 0 or num_captions == 0:
        raise ValueError(f"retrieval_recall: needs images and captions, got {num_images} and {num_captions}")
    if caption_to_image.shape != (num_captions,):
        raise ValueError(
            f"caption_to_image: expected shape ({num_captions},) (one image index per caption), "
            f"got {tuple(caption_to_image.shape)}"
        )
    if caption_to_image.dtype != torch.long:
        raise ValueError(f"caption_to_image: expected a LongTensor, got {caption_to_image.dtype}")
    if caption_to_image.min() < 0 or caption_to_image.max() >= num_images:
        raise ValueError(f"caption_to_image: image indices must lie in [0, {num_images})")


# --------------------------------------------------------------------------- probes


def linear_probe(
    train_x: Tensor | np.ndarray,
    train_y: Tensor | np.ndarray,
    test_x: Tensor | np.ndarray,
    test_y: Tensor | np.ndarray,
    c: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Test accuracy of a logistic regression (lbfgs, standardized features) on frozen features.

    A fixed inverse regularization `c` rather than a search: the probe compares methods on
    the same features budget, and a per-run search would add noise of its own.
    """
    return probe_accuracy(fit_linear_probe(train_x, train_y, c, max_iter), test_x, test_y)


def fit_linear_probe(
    train_x: Tensor | np.ndarray, train_y: Tensor | np.ndarray, c: float = 1.0, max_iter: int = 1000
) -> Pipeline:
    """The fitted probe of `linear_probe`, to score on several held-out sets (validation and test)."""
    train_x, train_y = _as_numpy(train_x), _as_numpy(train_y)
    if len(np.unique(train_y)) < 2:
        raise ValueError("linear_probe: train_y holds a single class; a probe needs at least two")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    # Probe problems are small: BLAS/OpenMP threads only contend with each other and with the
    # training workers sharing the machine (4k x 128 took 6.6 s threaded vs 0.27 s on one thread
    # under load), so the fit runs single-threaded.
    with threadpool_limits(limits=1):
        return probe.fit(train_x, train_y)


def probe_accuracy(probe: Pipeline, test_x: Tensor | np.ndarray, test_y: Tensor | np.ndarray) -> float:
    with threadpool_limits(limits=1):
        return float(probe.score(_as_numpy(test_x), _as_numpy(test_y)))


def kshot_probe(
    train_x: Tensor | np.ndarray,
    train_y: Tensor | np.ndarray,
    test_x: Tensor | np.ndarray,
    test_y: Tensor | np.ndarray,
    k: int,
    num_draws: int = 5,
    seed: int = 0,
) -> float:
    """Mean linear-probe accuracy over `num_draws` draws of k training samples per class.

    A class with fewer than k training samples contributes all of them.
    """
    probes = fit_kshot_probes(train_x, train_y, k, num_draws, seed)
    return float(np.mean([probe_accuracy(probe, test_x, test_y) for probe in probes]))


def fit_kshot_probes(
    train_x: Tensor | np.ndarray, train_y: Tensor | np.ndarray, k: int, num_draws: int = 5, seed: int = 0
) -> list[Pipeline]:
    """The `num_draws` fitted probes of `kshot_probe`, to score on several held-out sets."""
    if k < 1:
        raise ValueError(f"kshot_probe: k must be >= 1, got {k}")
    train_x, train_y = _as_numpy(train_x), _as_numpy(train_y)
    rng = np.random.default_rng(seed)
    probes = []
    for _ in range(num_draws):
        chosen = np.concatenate([_draw_per_class(rng, train_y, label, k) for label in np.unique(train_y)])
        probes.append(fit_linear_probe(train_x[chosen], train_y[chosen]))
    return probes


def _draw_per_class(rng: np.random.Generator, labels: np.ndarray, label: int, k: int) -> np.ndarray:
    members = np.flatnonzero(labels == label)
    return rng.choice(members, size=min(k, len(members)), replace=False)


def _as_numpy(array: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(array, Tensor):
        return array.detach().float().cpu().numpy() if array.is_floating_point() else array.cpu().numpy()
    return np.asarray(array)


# --------------------------------------------------------------------------- latent structure


def modality_gap(image_features: Tensor, text_features: Tensor) -> float:
    """L2 distance between the two modalities' centroids."""
    return float((image_features.float().mean(dim=0) - text_features.float().mean(dim=0)).norm())


def alignment(image_features: Tensor, text_features: Tensor, alpha: float = 2.0) -> float:
    """Wang & Isola's alignment: mean ||v_j - t_j||^alpha over true pairs (0 = perfectly aligned)."""
    if image_features.shape != text_features.shape:
        shapes = f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        raise ValueError(f"alignment: pairs need equal shapes, got {shapes}")
    return float((image_features.float() - text_features.float()).norm(dim=1).pow(alpha).mean())


def uniformity(features: Tensor, t: float = 2.0) -> float:
    """Wang & Isola's uniformity: log mean_{i != j} exp(-t ||x_i - x_j||^2); lower is more uniform.

    Over distinct pairs only (their reference code's `torch.pdist`), so it does not depend on
    N through the diagonal's zeros. Memory is N^2 / 2: callers subsample large sets.
    """
    if features.shape[0] < 2:
        raise ValueError("uniformity: needs at least two samples")
    squared_distances = torch.pdist(features.float(), p=2).pow(2)  # (N (N - 1) / 2,)
    return float(squared_distances.mul(-t).exp().mean().log())


def pair_cosine(image_features: Tensor, text_features: Tensor) -> float:
    """Mean cosine similarity <v_j, t_j> of true pairs (features already normalized)."""
    return float((image_features.float() * text_features.float()).sum(dim=1).mean())
