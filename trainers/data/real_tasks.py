"""Downstream task sets from real data: zero-shot sets and ALBEF-style JSON annotations.

Zero-shot entries (DataConfig.zeroshot): "cifar10:/root", "cifar100:/root" (torchvision's pickle
layout, never downloaded), "imagenet:/path/to/val" (an ImageFolder of synset folders) and
"folder:/path/to/images::/path/to/classnames.txt". Class names and prompt templates come from
open_clip's zero-shot metadata. Every set is subsampled to DataConfig.eval_size images.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder

from trainers.config import DataConfig
from trainers.data.images import load_image, pil_to_uint8, read_json_annotations, resolve
from trainers.data.tasks import (
    VE_LABELS,
    NLVRSplit,
    NLVRTask,
    ProbeTask,
    RetrievalTask,
    TaskSets,
    VESplit,
    VETask,
    VQASplit,
    VQATask,
    ZeroShotTask,
)

logger = logging.getLogger(__name__)


def _templates(lambdas) -> list[str]:
    return [template("{}") for template in lambdas]  # open_clip's templates are f-string lambdas


# Presence, not checksums: a local copy may be re-packed or a test fixture, and nothing is downloaded.
class _LocalCIFAR10(CIFAR10):
    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class _LocalCIFAR100(CIFAR100):
    train_list = [[name, None] for name, _ in CIFAR100.train_list]
    test_list = [[name, None] for name, _ in CIFAR100.test_list]
    meta = {**CIFAR100.meta, "md5": None}


def _subsample(count: int, limit: int) -> np.ndarray:
    """Evenly spaced indices, so a subsample keeps every class of a class-sorted folder."""
    return np.unique(np.linspace(0, count - 1, num=min(count, limit)).astype(np.int64))


def _cifar_part(kind: str, root: str, train: bool, data: DataConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    cls = _LocalCIFAR10 if kind == "cifar10" else _LocalCIFAR100
    try:
        dataset = cls(root, train=train, download=False)
    except RuntimeError:
        raise ValueError(f"data.zeroshot: {kind}:{root} is not a {kind} root (expected {cls.base_folder}/ "
                         f"with {cls.test_list[0][0]} and {cls.meta['filename']})") from None
    index = _subsample(len(dataset), data.eval_size)
    images = torch.stack([pil_to_uint8(Image.fromarray(dataset.data[i]), data.image_size) for i in index])
    labels = torch.tensor([dataset.targets[i] for i in index])
    return images, labels, list(dataset.classes)


def _folder_part(root: str, classnames: list[str], data: DataConfig, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not Path(root).is_dir():
        raise ValueError(f"data.zeroshot: {where}: {root} is not a folder")
    folder = ImageFolder(root, loader=lambda path: path)  # lists (path, class) without decoding
    if len(folder.classes) != len(classnames):
        raise ValueError(f"data.zeroshot: {where}: {root} has {len(folder.classes)} class folders but "
                         f"{len(classnames)} class names")
    index = _subsample(len(folder.samples), data.eval_size)
    images = torch.stack([load_image(Path(folder.samples[i][0]), data.image_size, where) for i in index])
    return images, torch.tensor([folder.samples[i][1] for i in index])


def _read_classnames(path: str) -> list[str]:
    if not Path(path).is_file():
        raise ValueError(f"data.zeroshot: class-names file {path} does not exist")
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def _split_probe(name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ProbeTask:
    """Sets without a training split: even items train the probe, odd items test it."""
    return ProbeTask(name=name, kind="shared", train_images=images[0::2], train_captions=[],
                     train_labels=labels[0::2], test_images=images[1::2], test_captions=[],
                     test_labels=labels[1::2], num_classes=num_classes)


def load_zeroshot_entry(entry: str, data: DataConfig) -> tuple[ZeroShotTask, ProbeTask]:
    """One DataConfig.zeroshot entry -> its zero-shot set and a linear-probe task on the same images."""
    kind, _, location = entry.partition(":")
    if kind in ("cifar10", "cifar100"):
        images, labels, classes = _cifar_part(kind, location, False, data)
        train_images, train_labels, _ = _cifar_part(kind, location, True, data)
        task = ZeroShotTask(kind, classes, _templates(SIMPLE_IMAGENET_TEMPLATES), images, labels)
        probe = ProbeTask(name=kind, kind="shared", train_images=train_images, train_captions=[],
                          train_labels=train_labels, test_images=images, test_captions=[], test_labels=labels,
                          num_classes=len(classes))
        return task, probe
    if kind == "imagenet":
        classes, templates, root = list(IMAGENET_CLASSNAMES), _templates(OPENAI_IMAGENET_TEMPLATES), location
    elif kind == "folder":
        root, _, names_file = location.partition("::")
        if not names_file:
            raise ValueError(f"data.zeroshot: {entry}: expected folder:/images::/classnames.txt")
        classes, templates = _read_classnames(names_file), _templates(SIMPLE_IMAGENET_TEMPLATES)
    else:
        raise ValueError(f"data.zeroshot: {entry}: unknown kind {kind!r} (cifar10, cifar100, imagenet, folder)")
    images, labels = _folder_part(root, classes, data, entry)
    name = kind if kind == "imagenet" else Path(root).name
    return ZeroShotTask(name, classes, templates, images, labels), _split_probe(name, images, labels, len(classes))


def build_real_task_sets(data: DataConfig) -> TaskSets:
    loaded = [load_zeroshot_entry(entry, data) for entry in data.zeroshot]
    tasks = TaskSets(zeroshot=[task for task, _ in loaded], probes=[probe for _, probe in loaded])
    files, root, size, limit = data.annotations, data.image_root, data.image_size, data.eval_size
    if "retrieval" in files:
        tasks.retrieval = load_albef_retrieval_json(files["retrieval"], root, size, limit)
    if {"vqa_train", "vqa_test"} <= files.keys():
        tasks.vqa = load_albef_vqa_json(files["vqa_train"], files["vqa_test"], root, size,
                                        files.get("vqa_answers"), limit)
    if {"nlvr_train", "nlvr_test"} <= files.keys():
        tasks.nlvr = load_albef_nlvr_json(files["nlvr_train"], files["nlvr_test"], root, size, limit)
    if {"ve_train", "ve_test"} <= files.keys():
        tasks.ve = load_albef_ve_json(files["ve_train"], files["ve_test"], root, size, limit)
    return tasks


# --------------------------------------------------------------------------- ALBEF JSON annotations


def _load_images(paths: list[str], image_root: str | None, image_size: int, source: Path) -> torch.Tensor:
    """Each distinct image is read once; an error names the annotation file and entry."""
    cache: dict[str, torch.Tensor] = {}
    for row, path in enumerate(paths):
        if path not in cache:
            cache[path] = load_image(resolve(path, image_root), image_size, f"{source}:entry {row}")
    return torch.stack([cache[p] for p in paths]) if paths else torch.zeros(0, 3, image_size, image_size,
                                                                          dtype=torch.uint8)


def load_albef_retrieval_json(path: str | Path, image_root: str | None, image_size: int = 64,
                              limit: int | None = None) -> RetrievalTask:
    """COCO / Flickr30k Karpathy test JSON: [{"image": path, "caption": [str, ...]}, ...]."""
    entries = read_json_annotations(path, ("image", "caption"), limit)
    images = _load_images([e["image"] for e in entries], image_root, image_size, Path(path))
    captions, owners = [], []
    for i, entry in enumerate(entries):
        texts = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        captions += texts
        owners += [i] * len(texts)
    return RetrievalTask(images=images, captions=captions, caption_to_image=torch.tensor(owners))


def _majority_answer(answer) -> str:
    return Counter(answer).most_common(1)[0][0] if isinstance(answer, list) else str(answer)


def _vqa_split(path, image_root, image_size, limit, vocab: dict[str, int]) -> VQASplit:
    entries = read_json_annotations(path, ("image", "question", "answer"), limit)
    kept = [e for e in entries if _majority_answer(e["answer"]) in vocab]
    if len(kept) < len(entries):
        logger.warning("%s: %d questions whose answer is outside the answer list were left out",
                       path, len(entries) - len(kept))
    images = _load_images([e["image"] for e in kept], image_root, image_size, Path(path))
    answers = torch.tensor([vocab[_majority_answer(e["answer"])] for e in kept], dtype=torch.long)
    return VQASplit(images=images, questions=[e["question"] for e in kept], answers=answers)


def load_albef_vqa_json(train_path: str | Path, test_path: str | Path, image_root: str | None,
                        image_size: int = 64, answer_list: str | Path | None = None,
                        limit: int | None = None) -> VQATask:
    """VQA v2 as ALBEF stores it: [{"image", "question", "answer": [str, ...]}]; answers classify
    into answer_list (ALBEF's answer_list.json) or, without one, the training answers."""
    if answer_list is not None:
        vocab_list = [str(a) for a in json.loads(Path(answer_list).read_text())]
    else:
        train_entries = read_json_annotations(train_path, ("image", "question", "answer"), limit)
        vocab_list = sorted({_majority_answer(e["answer"]) for e in train_entries})
    vocab = {answer: i for i, answer in enumerate(vocab_list)}
    return VQATask(train=_vqa_split(train_path, image_root, image_size, limit, vocab),
                   test=_vqa_split(test_path, image_root, image_size, limit, vocab), answer_vocab=vocab_list)


def _truth(value, where: str) -> int:
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return 1
    if text in ("false", "0"):
        return 0
    raise ValueError(f"{where}: label {value!r} is not True/False")


def _nlvr_split(path, image_root, image_size, limit) -> NLVRSplit:
    entries = read_json_annotations(path, ("images", "sentence", "label"), limit)
    source = Path(path)
    return NLVRSplit(
        images_left=_load_images([e["images"][0] for e in entries], image_root, image_size, source),
        images_right=_load_images([e["images"][1] for e in entries], image_root, image_size, source),
        statements=[e["sentence"] for e in entries],
        labels=torch.tensor([_truth(e["label"], f"{path}:entry {row}") for row, e in enumerate(entries)]),
    )


def load_albef_nlvr_json(train_path: str | Path, test_path: str | Path, image_root: str | None,
                         image_size: int = 64, limit: int | None = None) -> NLVRTask:
    """NLVR2 as ALBEF stores it: [{"images": [left, right], "sentence": str, "label": "True"|"False"}]."""
    return NLVRTask(train=_nlvr_split(train_path, image_root, image_size, limit),
                    test=_nlvr_split(test_path, image_root, image_size, limit))


def _ve_split(path, image_root, image_size, limit) -> VESplit:
    entries = read_json_annotations(path, ("image", "sentence", "label"), limit)
    labels = []
    for row, entry in enumerate(entries):
        if entry["label"] not in VE_LABELS:
            raise ValueError(f"{path}:entry {row}: label {entry['label']!r} is not one of {', '.join(VE_LABELS)}")
        labels.append(VE_LABELS.index(entry["label"]))
    # SNLI-VE names Flickr30k images by id, without extension (ALBEF appends .jpg)
    paths = [e["image"] if Path(e["image"]).suffix else f"{e['image']}.jpg" for e in entries]
    return VESplit(images=_load_images(paths, image_root, image_size, Path(path)),
                   hypotheses=[e["sentence"] for e in entries], labels=torch.tensor(labels))


def load_albef_ve_json(train_path: str | Path, test_path: str | Path, image_root: str | None,
                       image_size: int = 64, limit: int | None = None) -> VETask:
    """SNLI-VE as ALBEF stores it: [{"image": id, "sentence": str, "label": "entailment"|...}]."""
    return VETask(train=_ve_split(train_path, image_root, image_size, limit),
                  test=_ve_split(test_path, image_root, image_size, limit))
