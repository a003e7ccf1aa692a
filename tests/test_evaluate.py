"""Evaluation metrics on hand-made cases, and the two-tower suite end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainers.config import EvalConfig
from trainers.data.tasks import ProbeTask, RetrievalTask, TaskSets, ZeroShotTask
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


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


# --------------------------------------------------------------------------- retrieval


def test_identical_features_give_perfect_recall():
    features = F.normalize(torch.randn(50, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    recalls = retrieval_recall(features, features, torch.arange(50), chunk_size=8)
    assert recalls == {name: 1.0 for name in recalls}
    assert set(recalls) == {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mean_recall"}


def test_known_confusion_gives_known_recall():
    images = unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    # caption 0 (of image 0) points mostly at image 1: its own image is ranked second
    captions = unit([0.6, 0.8, 0], [0, 1, 0], [0, 0, 1])
    recalls = retrieval_recall(images, captions, torch.tensor([0, 1, 2]), ks=(1, 2))
    assert recalls["t2i_r1"] == pytest.approx(2 / 3)
    assert recalls["t2i_r2"] == 1.0
    # image 1 prefers its own caption (1.0) to caption 0 (0.8): every image finds its caption first
    assert recalls["i2t_r1"] == 1.0
    assert recalls["mean_recall"] == pytest.approx((2 / 3 + 1 + 1 + 1) / 4)


def test_image_to_text_counts_any_of_the_images_captions():
    images = unit([1, 0], [0, 1])
    # image 0 has a misleading caption (0) and a good one (1); image 1's best match is caption 0
    captions = unit([0, 1], [1, 0], [0.1, 1])
    recalls = retrieval_recall(images, captions, torch.tensor([0, 0, 1]), ks=(1, 2))
    assert recalls["i2t_r1"] == 0.5  # image 0 hits via caption 1, image 1 misses (caption 0 is first)
    assert recalls["i2t_r2"] == 1.0
    assert recalls["t2i_r1"] == pytest.approx(2 / 3)  # caption 0 retrieves image 1


def reference_recall(images, texts, caption_to_image, k):
    similarity = images @ texts.T  # (N, M), the full matrix at once
    top_captions = similarity.topk(k, dim=1).indices
    has_caption = torch.bincount(caption_to_image, minlength=len(images)) > 0
    i2t = (caption_to_image[top_captions] == torch.arange(len(images))[:, None]).any(1)[has_caption]
    top_images = similarity.T.topk(k, dim=1).indices
    t2i = (top_images == caption_to_image[:, None]).any(1)
    return i2t.float().mean().item(), t2i.float().mean().item()


def test_chunked_recall_matches_the_full_matrix_reference():
    generator = torch.Generator().manual_seed(1)
    images = F.normalize(torch.randn(40, 8, generator=generator), dim=1)
    caption_to_image = torch.randint(0, 37, (90,), generator=generator)  # images 37..39 have no caption
    texts = F.normalize(images[caption_to_image] + 0.8 * torch.randn(90, 8, generator=generator), dim=1)
    recalls = retrieval_recall(images, texts, caption_to_image, ks=(1, 5, 10), chunk_size=7)
    for k in (1, 5, 10):
        i2t, t2i = reference_recall(images, texts, caption_to_image, k)
        assert recalls[f"i2t_r{k}"] == pytest.approx(i2t)
        assert recalls[f"t2i_r{k}"] == pytest.approx(t2i)
    assert 0.0 < recalls["t2i_r1"] < 1.0  # the case is neither trivial nor hopeless


def test_bad_caption_to_image_is_a_clear_error():
    features = torch.eye(3)
    with pytest.raises(ValueError, match="caption_to_image"):
        retrieval_recall(features, features, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="caption_to_image"):
        retrieval_recall(features, features, torch.tensor([0, 1]))


# --------------------------------------------------------------------------- zero-shot


def test_zeroshot_classifier_is_the_renormalized_template_mean():
    prompts = torch.stack([unit([1, 0], [0, 1]), unit([1, 0], [1, 0])])  # (C=2, T=2, D=2)
    classifier = zeroshot_classifier(prompts)
    assert torch.allclose(classifier, unit([1, 1], [1, 0]))


def test_known_confusion_gives_known_topk():
    classifier = torch.eye(4)
    # scores per class: image 0 ranks its label 0 last, image 1 ranks label 2 second, image 2 is right
    images = unit([0.1, 0.5, 0.3, 0.2], [0.1, 0.5, 0.3, 0.2], [0, 0, 0, 1])
    accuracies = zeroshot_topk(images, classifier, torch.tensor([0, 2, 3]), chunk_size=2)
    assert accuracies["top1"] == pytest.approx(1 / 3)
    assert accuracies["top3"] == pytest.approx(2 / 3)
    assert accuracies["top5"] == 1.0  # clipped to 4 classes


# --------------------------------------------------------------------------- probes


def clusters(num_classes=4, per_class=60, dim=16, spread=0.3, seed=0):
    """Gaussian clusters around fixed centres; `seed` draws the samples only."""
    centres = np.random.default_rng(100).normal(size=(num_classes, dim)) * 3
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def test_linear_probe_separates_clusters_and_not_random_labels():
    x, y = clusters()
    test_x, test_y = clusters(seed=1)
    assert linear_probe(x, y, test_x, test_y) > 0.95
    rng = np.random.default_rng(1)
    random_x = rng.normal(size=x.shape)
    accuracy = linear_probe(
        random_x, rng.integers(0, 4, len(y)), rng.normal(size=x.shape), rng.integers(0, 4, len(y))
    )
    assert accuracy < 0.45  # chance is 0.25


def test_kshot_with_one_sample_per_class():
    x, y = clusters(spread=0.5)
    test_x, test_y = clusters(spread=0.5, seed=1)
    assert (
        kshot_probe(torch.tensor(x), torch.tensor(y), torch.tensor(test_x), torch.tensor(test_y), k=1) > 0.9
    )
    noisy_x, _ = clusters(spread=3.0, seed=2)
    one_shot = kshot_probe(noisy_x, y, test_x, test_y, k=1, num_draws=3)
    many_shot = kshot_probe(noisy_x, y, test_x, test_y, k=40, num_draws=3)
    assert one_shot < many_shot  # fewer shots, less information


def test_probes_reject_bad_input():
    x, y = clusters()
    with pytest.raises(ValueError, match="single class"):
        linear_probe(x, np.zeros(len(y)), x, y)
    with pytest.raises(ValueError, match="k must be"):
        kshot_probe(x, y, x, y, k=0)


# --------------------------------------------------------------------------- structure


def test_modality_gap_of_shifted_clouds_is_the_shift():
    cloud = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    shift = torch.tensor([0.3, -0.4, 0.0, 0.0, 1.2])
    assert modality_gap(cloud, cloud + shift) == pytest.approx(float(shift.norm()), rel=1e-5)


def test_alignment_and_pair_cosine():
    features = F.normalize(torch.randn(30, 6), dim=1)
    assert alignment(features, features) == 0.0
    assert pair_cosine(features, features) == pytest.approx(1.0)
    assert alignment(unit([1, 0]), unit([0, 1])) == pytest.approx(2.0)  # ||e0 - e1||^2
    assert pair_cosine(unit([1, 0]), unit([0, 1])) == 0.0


def test_uniformity_is_lower_when_spread_out():
    generator = torch.Generator().manual_seed(0)
    spread = F.normalize(torch.randn(300, 8, generator=generator), dim=1)
    clustered = F.normalize(
        torch.tensor([1.0] + [0.0] * 7) + 0.05 * torch.randn(300, 8, generator=generator), dim=1
    )
    assert uniformity(spread) < uniformity(clustered)
    assert uniformity(unit([1, 0], [-1, 0])) == pytest.approx(-8.0)  # one pair at squared distance 4


# --------------------------------------------------------------------------- the suite

CLASSNAMES = ["circle", "square", "star", "ring"]
EMBED_DIM = 8


def oracle_encoders(independent: bool):
    """Encoders that know the class: images carry it in pixel (0, 0, 0), captions name it. Both
    towers map a class to the same point, so every class-level metric of the suite must be perfect."""
    class_embedding = F.normalize(
        torch.randn(len(CLASSNAMES), EMBED_DIM, generator=torch.Generator().manual_seed(3))
    )

    def kinds(labels: torch.Tensor, jitter: torch.Tensor) -> dict[str, torch.Tensor]:
        jitter = F.normalize(jitter - jitter.mean(), dim=1)
        shared = F.normalize(class_embedding[labels] + 0.01 * jitter, dim=1)
        features = {"shared": shared, "pooled": torch.cat([shared, jitter], dim=1)}
        if independent:
            features["independent"] = F.normalize(jitter, dim=1)
        return features

    def encode_images(images: torch.Tensor) -> dict[str, torch.Tensor]:
        assert images.dtype == torch.uint8 and images.ndim == 4
        return kinds(images[:, 0, 0, 0].long(), images[:, 1, :2, :4].reshape(len(images), -1).float())

    def encode_texts(texts: list[str]) -> dict[str, torch.Tensor]:
        assert isinstance(texts, list)
        labels = torch.tensor(
            [next(i for i, name in enumerate(CLASSNAMES) if name in text) for text in texts]
        )
        jitter = torch.tensor([[float(len(text) % 7 + j) for j in range(EMBED_DIM)] for text in texts])
        return kinds(labels, jitter)

    return encode_images, encode_texts


def make_images(labels: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 255, (len(labels), 3, 8, 8), dtype=torch.uint8, generator=generator)
    images[:, 0, 0, 0] = labels.to(torch.uint8)
    return images


def make_task_sets(num_per_split: int = 48, validation: bool = False) -> TaskSets:
    """Test task sets; with `validation`, the same tasks on a third split, the probes' training part shared."""
    generator = torch.Generator().manual_seed(0)
    splits = ("train", "test", "validation")
    labels = {split: torch.randint(0, 4, (num_per_split,), generator=generator) for split in splits}
    attribute = {split: torch.randint(0, 3, (num_per_split,), generator=generator) for split in splits}
    captions = {split: [f"a photo of a {CLASSNAMES[c]}" for c in labels[split]] for split in labels}
    images = {split: make_images(labels[split], seed) for seed, split in enumerate(labels)}

    def probe(name: str, kind: str, targets: dict[str, torch.Tensor], scored: str) -> ProbeTask:
        return ProbeTask(
            name,
            kind,
            images["train"],
            captions["train"],
            targets["train"],
            images[scored],
            captions[scored],
            targets[scored],
            int(targets["train"].max()) + 1,
        )

    caption_to_image = torch.arange(num_per_split).repeat_interleave(2)  # two captions per image

    def scored_on(split: str) -> TaskSets:
        return TaskSets(
            zeroshot=[
                ZeroShotTask(
                    "shapes", CLASSNAMES, ["a photo of a {}", "a drawing of a {}"], images[split], labels[split]
                )
            ],
            retrieval=RetrievalTask(images[split], [captions[split][i] for i in caption_to_image], caption_to_image),
            probes=[probe("class", "shared", labels, split), probe("image_only", "image_only", attribute, split)],
        )

    tasks = scored_on("test")
    if validation:
        tasks.validation = scored_on("validation")
    return tasks


ALL_TASKS = ["zeroshot", "retrieval", "linear_probe", "kshot", "structure", "vqa", "nlvr", "ve"]


def expected_keys(feature_names: list[str]) -> set[str]:
    keys = {f"zeroshot/shapes/{name}" for name in ("top1", "top3", "top5")}
    keys |= {f"retrieval/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"retrieval/mean_recall"}
    keys |= {f"linear_probe/{target}/{name}" for target in ("class", "image_only") for name in feature_names}
    keys |= {"linear_probe/top1", "kshot/k1", "kshot/k5"}
    keys |= {f"structure/{name}" for name in ("modality_gap", "alignment", "uniformity", "pair_cosine")}
    return keys


def test_evaluate_two_tower_returns_every_metric_with_dfs_heads():
    encode_images, encode_texts = oracle_encoders(independent=True)
    metrics = evaluate_two_tower(
        encode_images,
        encode_texts,
        make_task_sets(),
        EvalConfig(tasks=ALL_TASKS, kshot=[1, 5]),
        batch_size=20,
    )
    modalities = [
        f"{m}{suffix}" for m in ("image", "text") for suffix in ("", "_independent", "_concat", "_pooled")
    ]
    assert set(metrics) == expected_keys(modalities)
    assert all(math.isfinite(value) for value in metrics.values())
    # the oracle maps a class to one point in both towers: class-level metrics are perfect
    assert metrics["zeroshot/shapes/top1"] == 1.0
    assert metrics["linear_probe/top1"] == 1.0 == metrics["linear_probe/class/text"]
    assert metrics["kshot/k1"] == 1.0
    # a caption's class holds about 12 images, all equally close: its own is in the top 10 most often
    assert metrics["retrieval/t2i_r10"] > 0.6 > metrics["retrieval/t2i_r1"]
    assert metrics["structure/pair_cosine"] > 0.99
    assert metrics["structure/modality_gap"] < 0.05
    # the image-only attribute is random noise to the oracle's shared embedding
    assert metrics["linear_probe/image_only/image"] < 0.7


def test_evaluate_two_tower_computes_only_the_requested_tasks():
    encode_images, encode_texts = oracle_encoders(independent=False)
    tasks = make_task_sets()
    metrics = evaluate_two_tower(encode_images, encode_texts, tasks, EvalConfig(tasks=["retrieval", "vqa"]))
    assert set(metrics) == {key for key in expected_keys([]) if key.startswith("retrieval/")}
    tasks.retrieval = None  # structure then falls back to the shared probe's test pairs
    metrics = evaluate_two_tower(
        encode_images, encode_texts, tasks, EvalConfig(tasks=["structure", "linear_probe"])
    )
    names = ["image", "text", "image_pooled", "text_pooled"]
    assert set(metrics) == {
        k for k in expected_keys(names) if k.split("/")[0] in ("structure", "linear_probe")
    }


def test_encoder_without_shared_features_is_an_error():
    tasks = make_task_sets()
    with pytest.raises(ValueError, match="'shared' is required"):
        evaluate_two_tower(
            lambda images: {"pooled": images.float()},
            oracle_encoders(False)[1],
            tasks,
            EvalConfig(tasks=["retrieval"]),
        )


def test_embedding_sample_holds_the_shared_probe_test_pairs():
    encode_images, encode_texts = oracle_encoders(independent=False)
    tasks = make_task_sets()
    sample = embedding_sample(encode_images, encode_texts, tasks, n=30)
    assert sample["image"].shape == sample["text"].shape == (30, EMBED_DIM)
    np.testing.assert_array_equal(sample["labels"], tasks.probes[0].test_labels[:30].numpy())
    assert (np.sum(sample["image"] * sample["text"], axis=1) > 0.99).all()  # true pairs line up


def test_image_only_probe_sets_probe_images_and_skip_structure():
    encode_images, encode_texts = oracle_encoders(independent=False)
    tasks = make_task_sets()
    tasks.retrieval = None
    for probe in tasks.probes:  # a CIFAR-like data set: no captions
        probe.train_captions, probe.test_captions = [], []
    config = EvalConfig(tasks=["linear_probe", "kshot", "structure"], kshot=[1])
    metrics = evaluate_two_tower(encode_images, encode_texts, tasks, config)
    targets, names = ("class", "image_only"), ("image", "image_pooled")
    probes = {f"linear_probe/{target}/{name}" for target in targets for name in names}
    assert set(metrics) == probes | {"linear_probe/top1", "kshot/k1"}
    sample = embedding_sample(encode_images, encode_texts, tasks, n=10)
    assert sample["image"].shape == (10, EMBED_DIM) and sample["text"].shape == (0, EMBED_DIM)


def test_suite_on_the_synthetic_world_task_sets_with_random_encoders():
    from trainers.config import DataConfig
    from trainers.data import build_task_sets

    tasks = build_task_sets(DataConfig(train_size=64, eval_size=64, image_size=16))
    generator = torch.Generator().manual_seed(0)
    image_projection = torch.randn(3 * 16 * 16, EMBED_DIM, generator=generator)
    word_vectors = torch.randn(997, EMBED_DIM, generator=generator)

    def encode_images(images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = (images.float().flatten(1) / 255) @ image_projection
        return {"shared": F.normalize(pooled, dim=1), "pooled": pooled}

    def encode_texts(texts: list[str]) -> dict[str, torch.Tensor]:
        # a bag of words with a stable (not per-process) hash of each word
        pooled = torch.stack(
            [word_vectors[[sum(map(ord, w)) % 997 for w in t.split()]].mean(0) for t in texts]
        )
        return {"shared": F.normalize(pooled, dim=1), "pooled": pooled}

    metrics = evaluate_two_tower(encode_images, encode_texts, tasks, EvalConfig(tasks=ALL_TASKS, kshot=[1]))
    names = ["image", "text", "image_pooled", "text_pooled"]
    expected = {f"linear_probe/{probe.name}/{name}" for probe in tasks.probes for name in names}
    expected |= {f"zeroshot/{task.name}/top{k}" for task in tasks.zeroshot for k in (1, 3, 5)}
    expected |= {key for key in expected_keys([]) if not key.startswith(("zeroshot/shapes", "kshot/k5"))}
    assert set(metrics) == expected | {f"val/{key}" for key in expected}
    assert all(math.isfinite(value) for value in metrics.values())
    accuracies = [value for key, value in metrics.items() if key.removeprefix("val/").split("/")[0] != "structure"]
    assert all(0.0 <= value <= 1.0 for value in accuracies)


def counting_encoders(encoded: dict[str, int]):
    encode_images, encode_texts = oracle_encoders(independent=False)

    def counting_images(images: torch.Tensor) -> dict[str, torch.Tensor]:
        encoded["images"] += len(images)
        return encode_images(images)

    def counting_texts(texts: list[str]) -> dict[str, torch.Tensor]:
        encoded["texts"] += len(texts)
        return encode_texts(texts)

    return counting_images, counting_texts


def test_validation_without_the_shared_probe_reports_no_top1_for_another_probe():
    tasks = make_task_sets(validation=True)
    tasks.validation.probes = [tasks.validation.probes[1]]  # real data: only some sets have validation probes
    tasks.validation.probes[0].kind = "shared"
    config = EvalConfig(tasks=["linear_probe", "kshot"], kshot=[1])
    metrics = evaluate_two_tower(*oracle_encoders(independent=False), tasks, config)
    assert "linear_probe/top1" in metrics and "kshot/k1" in metrics
    assert "val/linear_probe/image_only/image" in metrics
    assert "val/linear_probe/top1" not in metrics and "val/kshot/k1" not in metrics


def test_probes_sharing_a_split_encode_it_once():
    encoded = {"images": 0, "texts": 0}
    tasks = make_task_sets(num_per_split=48)
    tasks.probes[1].train_captions = list(tasks.probes[1].train_captions)  # equal text, another list
    evaluate_two_tower(*counting_encoders(encoded), tasks, EvalConfig(tasks=["linear_probe"]))
    distinct_captions = set(tasks.probes[0].train_captions) | set(tasks.probes[0].test_captions)
    assert len(tasks.probes) == 2 and encoded == {"images": 96, "texts": len(distinct_captions)}


def test_validation_metrics_are_the_validation_sets_own_and_reuse_the_probe_training_part():
    encoded = {"images": 0, "texts": 0}
    tasks = make_task_sets(num_per_split=48, validation=True)
    config = EvalConfig(tasks=ALL_TASKS, kshot=[1, 5])
    metrics = evaluate_two_tower(*counting_encoders(encoded), tasks, config)
    test_metrics = {key: value for key, value in metrics.items() if not key.startswith("val/")}
    assert set(test_metrics) == expected_keys(["image", "text", "image_pooled", "text_pooled"])
    assert set(metrics) == set(test_metrics) | {f"val/{key}" for key in test_metrics}
    # each split's images once: the probes' training part, test and validation
    assert encoded["images"] == 3 * 48
    # the same numbers as evaluating the validation sets on their own (then scored as if test)
    alone = evaluate_two_tower(*oracle_encoders(independent=False), tasks.validation, config)
    assert {f"val/{key}": value for key, value in alone.items()} == {
        key: value for key, value in metrics.items() if key.startswith("val/")
    }
    # and they are not the test numbers: the image-only attribute is noise, scored on other samples
    assert metrics["val/linear_probe/image_only/image"] != metrics["linear_probe/image_only/image"]


def test_empty_retrieval_set_is_a_clear_error():
    with pytest.raises(ValueError, match="needs images and captions"):
        retrieval_recall(torch.eye(3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
