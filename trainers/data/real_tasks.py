"""Downstream task sets from real data: zero-shot sets and ALBEF-style JSON annotations.

Zero-shot entries (DataConfig.zeroshot): "cifar10:/root", "cifar100:/root" (torchvision's pickle
layout, never downloaded), "imagenet:/path/to/val" (an ImageFolder of WordNet synset folders) and
"folder:/path/to/images::/path/to/classnames.txt". Classes are matched by name, never by position:
CIFAR's by the names in its own meta file, ImageNet's by synset id (timm's synset list, in the
order of open_clip's cleaned class names), a folder's by folder name (a class-names line is
`folder name` or `folder name<TAB>prompt name`); a mismatch is an error naming both sides.
Prompts: CLIP's published templates and cleaned class names (open_clip's for ImageNet;
cifar_zeroshot_metadata.json for CIFAR-10/100, from CLIP's data/prompts.md).

Evaluation sets are used in full unless `data.eval_limit` caps each one (evenly spaced, every
class kept). Validation (`TaskSets.validation`, the split that selects hyperparameters): a data
set's own validation split where its format has one (Karpathy-style retrieval JSON entries with
"split": "val" next to "test", or `annotations.retrieval_val`); otherwise a deterministic,
class-stratified half of the evaluation set (per class, in file order: even positions test, odd
positions validation; for retrieval without classes, even and odd images). Linear probes train on
CIFAR's training split (at most `data.probe_train_size` images); sets without a training split
(ImageNet val, folders) train their probe on the validation half and test it on the test half,
and have no validation probe (it would be scored on its own training images).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder

from trainers.config import DataConfig
from trainers.data.images import load_image, pil_to_uint8, read_json_annotations, read_json_file, resolve
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
CIFAR_METADATA_FILE = Path(__file__).with_name("cifar_zeroshot_metadata.json")


def _templates(lambdas) -> list[str]:
    return [template("{}") for template in lambdas]  # open_clip's templates are f-string lambdas


@cache
def cifar_metadata(kind: str) -> tuple[dict[str, str], list[str]]:
    """({class name in the data set's meta file: CLIP's cleaned name}, CLIP's templates) for cifar10/100."""
    entry = json.loads(CIFAR_METADATA_FILE.read_text())[kind]
    return entry["classnames"], entry["templates"]


@cache
def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k synset ids in the order of open_clip's IMAGENET_CLASSNAMES (sorted ids)."""
    from timm.data import ImageNetInfo

    synsets = list(ImageNetInfo().label_names())
    assert len(synsets) == len(IMAGENET_CLASSNAMES) == 1000
    return synsets


# Presence, not checksums: a local copy may be re-packed or a test fixture, and nothing is downloaded.
class _LocalCIFAR10(CIFAR10):
    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class _LocalCIFAR100(CIFAR100):
    train_list = [[name, None] for name, _ in CIFAR100.train_list]
    test_list = [[name, None] for name, _ in CIFAR100.test_list]
    meta = {**CIFAR100.meta, "md5": None}


def _subsample(count: int, limit: int | None) -> np.ndarray:
    """Evenly spaced indices, so a subsample keeps every class of a class-sorted folder."""
    if limit is None or limit >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, num=limit).astype(np.int64))


def stratified_halves(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(test, validation) indices: within each class, in order, even positions test and odd validation."""
    position = np.zeros(len(labels), dtype=np.int64)
    seen: Counter = Counter()
    for i, label in enumerate(labels.tolist()):
        position[i] = seen[label]
        seen[label] += 1
    return np.flatnonzero(position % 2 == 0), np.flatnonzero(position % 2 == 1)


@dataclass
class _LabelledImages:
    images: torch.Tensor
    labels: torch.Tensor

    def take(self, index: np.ndarray) -> _LabelledImages:
        index = torch.as_tensor(index, dtype=torch.long)
        return _LabelledImages(self.images[index], self.labels[index])


def _cifar_dataset(kind: str, root: str, train: bool, where: str) -> CIFAR10:
    cls = _LocalCIFAR10 if kind == "cifar10" else _LocalCIFAR100
    try:
        return cls(root, train=train, download=False)
    except RuntimeError:
        raise ValueError(f"{where}: {root} is not a {kind} root (expected {cls.base_folder}/ "
                         f"with {cls.test_list[0][0]} and {cls.meta['filename']})") from None


def _cifar_classnames(kind: str, stored: list[str], where: str) -> list[str]:
    cleaned, _ = cifar_metadata(kind)
    unknown = [name for name in stored if name not in cleaned]
    if unknown or len(stored) != len(cleaned):
        raise ValueError(f"{where}: the class names in the data set's meta file ({', '.join(unknown[:5]) or 'count'}"
                         f" of {len(stored)}) do not match {kind}'s {len(cleaned)} classes "
                         f"({', '.join(list(cleaned)[:5])}, ...)")
    return [cleaned[name] for name in stored]  # the label i of the pickle is stored[i]: matched by name


def _cifar_part(dataset: CIFAR10, limit: int | None, image_size: int) -> _LabelledImages:
    index = _subsample(len(dataset), limit)
    images = torch.stack([pil_to_uint8(Image.fromarray(dataset.data[i]), image_size) for i in index])
    return _LabelledImages(images, torch.tensor([dataset.targets[i] for i in index]))


def read_classnames(path: str, where: str) -> dict[str, str]:
    """A class-names file: one class per line, `folder name` or `folder name<TAB>prompt name`."""
    if not Path(path).is_file():
        raise ValueError(f"{where}: class-names file {path} does not exist")
    names: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        folder, _, prompt = line.partition("\t")
        folder, prompt = folder.strip(), (prompt or folder).strip()
        if folder in names:
            raise ValueError(f"{where}: {path}:{number}: class {folder!r} is listed twice")
        names[folder] = prompt
    if not names:
        raise ValueError(f"{where}: class-names file {path} is empty")
    return names


def _class_folders(root: str, where: str) -> list[str]:
    if not Path(root).is_dir():
        raise ValueError(f"{where}: {root} is not a folder")
    folders = sorted(entry.name for entry in Path(root).iterdir() if entry.is_dir())
    if not folders:
        raise ValueError(f"{where}: {root} has no class folders")
    return folders


def match_class_folders(root: str, class_keys: list[str], where: str, what: str) -> dict[str, int]:
    """{class folder: class index}, matched by name; any folder or class without its match is an error."""
    folders = _class_folders(root, where)
    index = {key: i for i, key in enumerate(class_keys)}
    unmatched_folders = [folder for folder in folders if folder not in index]
    unmatched_classes = [key for key in class_keys if key not in set(folders)]
    if unmatched_folders or unmatched_classes:
        raise ValueError(
            f"{where}: class folders and {what} do not match by name: folders without a class: "
            f"{', '.join(unmatched_folders[:5]) or 'none'}; classes without a folder: "
            f"{', '.join(unmatched_classes[:5]) or 'none'}")
    return {folder: index[folder] for folder in folders}


def _folder_part(root: str, folder_to_class: dict[str, int], data: DataConfig, where: str) -> _LabelledImages:
    # ImageFolder lists (path, folder index) without decoding; its folder index is alphabetical,
    # so labels are re-mapped by folder name
    folder = ImageFolder(root, loader=lambda path: path)
    if not folder.samples:
        raise ValueError(f"{where}: {root} has no images in its class folders")
    labels = np.array([folder_to_class[folder.classes[target]] for _, target in folder.samples])
    index = _subsample(len(folder.samples), data.eval_limit)
    images = torch.stack([load_image(Path(folder.samples[i][0]), data.image_size, where) for i in index])
    return _LabelledImages(images, torch.from_numpy(labels[index]))


@dataclass
class ZeroShotSet:
    """One DataConfig.zeroshot entry on its test and validation halves, and its linear probes."""

    test: ZeroShotTask
    validation: ZeroShotTask
    probe: ProbeTask
    validation_probe: ProbeTask | None


def _probe(name: str, train: _LabelledImages, scored: _LabelledImages, num_classes: int) -> ProbeTask:
    return ProbeTask(name=name, kind="shared", train_images=train.images, train_captions=[],
                     train_labels=train.labels, test_images=scored.images, test_captions=[],
                     test_labels=scored.labels, num_classes=num_classes)


# Zero-shot kinds whose data set has a training split: their linear probe trains on it, so both halves of
# the evaluation set are scored (the others train their probe on the validation half).
KINDS_WITH_TRAINING_SPLIT = ("cifar10", "cifar100")


def zeroshot_set_name(entry: str) -> str:
    """The name a data.zeroshot entry's metrics carry (zeroshot/<name>/top1): its kind, or a folder set's folder."""
    kind, _, location = entry.partition(":")
    return Path(location.partition("::")[0]).name if kind == "folder" else kind


def _folder_entry(location: str, where: str) -> tuple[str, str]:
    """(image root, class-names file) of a `folder:/images::/classnames.txt` entry."""
    root, _, names_file = location.partition("::")
    if not names_file:
        raise ValueError(f"{where}: expected folder:/images::/classnames.txt")
    return root, names_file


def load_zeroshot_entry(entry: str, data: DataConfig, where: str = "data.zeroshot") -> ZeroShotSet:
    """One DataConfig.zeroshot entry -> its zero-shot set (test and validation halves) and linear probes."""
    kind, _, location = entry.partition(":")
    name, where = zeroshot_set_name(entry), f"{where}: {entry}"
    if kind in KINDS_WITH_TRAINING_SPLIT:
        evaluation = _cifar_dataset(kind, location, False, where)
        classes = _cifar_classnames(kind, list(evaluation.classes), where)
        templates = cifar_metadata(kind)[1]
        images = _cifar_part(evaluation, data.eval_limit, data.image_size)
        probe_train = _cifar_part(_cifar_dataset(kind, location, True, where), data.probe_train_size,
                                  data.image_size)
    elif kind in ("imagenet", "folder"):
        if kind == "imagenet":
            root, templates = location, _templates(OPENAI_IMAGENET_TEMPLATES)
            folder_to_class = match_class_folders(root, imagenet_synsets(), where, "ImageNet-1k's synset ids")
            classes = list(IMAGENET_CLASSNAMES)
        else:
            root, names_file = _folder_entry(location, where)
            names = read_classnames(names_file, where)
            folder_to_class = match_class_folders(root, list(names), where, f"the class names in {names_file}")
            classes, templates = list(names.values()), _templates(SIMPLE_IMAGENET_TEMPLATES)
        images = _folder_part(root, folder_to_class, data, where)
        probe_train = None
    else:
        raise ValueError(f"{where}: unknown kind {kind!r} (cifar10, cifar100, imagenet, folder)")
    test_index, validation_index = stratified_halves(images.labels.numpy())
    test, validation = images.take(test_index), images.take(validation_index)
    if probe_train is None:  # no training split: the probe trains on the validation half
        probe, validation_probe = _probe(name, validation, test, len(classes)), None
    else:
        probe = _probe(name, probe_train, test, len(classes))
        validation_probe = _probe(name, probe_train, validation, len(classes))
    return ZeroShotSet(ZeroShotTask(name, classes, templates, test.images, test.labels),
                       ZeroShotTask(name, classes, templates, validation.images, validation.labels),
                       probe, validation_probe)


def check_zeroshot_entry(entry: str, where: str) -> None:
    """Before Ray starts, without decoding images: the set's files are there and its classes match by name."""
    kind, _, location = entry.partition(":")
    where = f"{where}: {entry}"
    if kind in KINDS_WITH_TRAINING_SPLIT:
        evaluation = _cifar_dataset(kind, location, False, where)
        _cifar_classnames(kind, list(evaluation.classes), where)
        cls = type(evaluation)
        missing = [name for name, _ in cls.train_list if not (Path(location) / cls.base_folder / name).is_file()]
        if missing:
            raise ValueError(f"{where}: the training split's {missing[0]} is missing (the linear probe trains on it)")
    elif kind == "imagenet":
        match_class_folders(location, imagenet_synsets(), where, "ImageNet-1k's synset ids")
    elif kind == "folder":
        root, names_file = _folder_entry(location, where)
        match_class_folders(root, list(read_classnames(names_file, where)), where,
                            f"the class names in {names_file}")
    else:
        raise ValueError(f"{where}: unknown kind {kind!r} (cifar10, cifar100, imagenet, folder)")
    if kind in ("imagenet", "folder"):
        root = location.partition("::")[0]
        empty = [folder for folder in _class_folders(root, where) if not any((Path(root) / folder).iterdir())]
        if empty:
            raise ValueError(f"{where}: class folder {Path(root) / empty[0]} holds no images")


# The images each annotation file names, by its entries' keys (read_json_annotations' `required`).
_ANNOTATION_IMAGE_KEYS = {"vqa_train": ("image", "question", "answer"), "vqa_test": ("image", "question", "answer"),
                          "nlvr_train": ("images", "sentence", "label"), "nlvr_test": ("images", "sentence", "label"),
                          "ve_train": ("image", "sentence", "label"), "ve_test": ("image", "sentence", "label")}


def check_annotations(data: DataConfig) -> None:
    """Before Ray starts: each annotation file reads, has its keys and splits, and names existing images."""
    for task, path in data.annotations.items():
        if task == "retrieval_val" or task == "vqa_answers":
            continue
        if task == "retrieval":
            retrieval_split_entries(path, data.annotations.get("retrieval_val"))  # both splits are there
            used = [(path, row, e) for row, e in enumerate(read_retrieval_entries(path))
                    if e.get("split", "test") in ("test", "val")]
            if "retrieval_val" in data.annotations:
                source = data.annotations["retrieval_val"]
                used += [(source, row, e) for row, e in enumerate(read_retrieval_entries(source))]
            named = [(e["image"], source, row) for source, row, e in used]
        else:
            entries = read_json_annotations(path, _ANNOTATION_IMAGE_KEYS[task])
            named = [(image, path, row) for row, e in enumerate(entries)
                     for image in (e["images"] if "images" in e else [e["image"]])]
        for image, source, row in named:
            root = data.image_root if data.image_root is not None else Path(source).parent
            if task.startswith("ve_") and not Path(image).suffix:
                image = f"{image}.jpg"  # SNLI-VE names Flickr30k images by id (see _ve_split)
            if not resolve(image, root).is_file():
                raise ValueError(f"{source}:entry {row}: image file {resolve(image, root)} does not exist "
                                 f"(data.annotations.{task})")


def build_real_task_sets(data: DataConfig) -> TaskSets:
    """The test task sets, with the validation ones in `.validation` (see the module's docstring)."""
    loaded = [load_zeroshot_entry(entry, data, f"data.zeroshot[{i}]") for i, entry in enumerate(data.zeroshot)]
    tasks = TaskSets(zeroshot=[s.test for s in loaded], probes=[s.probe for s in loaded])
    tasks.validation = TaskSets(zeroshot=[s.validation for s in loaded],
                                probes=[s.validation_probe for s in loaded if s.validation_probe is not None])
    files, root, size, limit = data.annotations, data.image_root, data.image_size, data.eval_limit
    if "retrieval" in files:
        tasks.retrieval, tasks.validation.retrieval = load_retrieval_splits(
            files["retrieval"], files.get("retrieval_val"), root, size, limit)
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
            # relative paths resolve against image_root, else the annotation file's folder (as a CSV's do)
            root = image_root if image_root is not None else source.parent
            cache[path] = load_image(resolve(path, root), image_size, f"{source}:entry {row}")
    return torch.stack([cache[p] for p in paths]) if paths else torch.zeros(0, 3, image_size, image_size,
                                                                          dtype=torch.uint8)


def read_retrieval_entries(path: str | Path) -> list[dict]:
    """Retrieval annotations as [{"image", "caption": [str, ...], "split"?}]: ALBEF's COCO / Flickr30k
    JSON ([{"image", "caption"}], one file per split), or Karpathy's dataset_coco.json / dataset_flickr30k.json
    ({"images": [{"filepath"?, "filename", "split", "sentences": [{"raw"}]}]})."""
    path = Path(path)
    if path.is_file():
        document = read_json_file(path)
        if isinstance(document, dict) and "images" in document:
            entries = []
            for row, image in enumerate(document["images"]):
                missing = [key for key in ("filename", "sentences") if key not in image]
                if missing:
                    raise ValueError(f"{path}: images[{row}] lacks {', '.join(missing)}")
                entries.append({"image": str(Path(image.get("filepath", "")) / image["filename"]),
                                "caption": [sentence["raw"] for sentence in image["sentences"]],
                                "split": image.get("split", "test")})
            return entries
    return read_json_annotations(path, ("image", "caption"))


def load_albef_retrieval_json(path: str | Path, image_root: str | None, image_size: int = 64,
                              limit: int | None = None, entries: list[dict] | None = None) -> RetrievalTask:
    """COCO / Flickr30k Karpathy test JSON: [{"image": path, "caption": [str, ...]}, ...]."""
    entries = read_retrieval_entries(path) if entries is None else entries
    entries = [entries[i] for i in _subsample(len(entries), limit)]
    images = _load_images([e["image"] for e in entries], image_root, image_size, Path(path))
    captions, owners = [], []
    for i, entry in enumerate(entries):
        texts = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        captions += texts
        owners += [i] * len(texts)
    return RetrievalTask(images=images, captions=captions, caption_to_image=torch.tensor(owners))


def load_retrieval_splits(path: str, validation_path: str | None, image_root: str | None, image_size: int,
                          limit: int | None) -> tuple[RetrievalTask, RetrievalTask]:
    """(test, validation) retrieval sets: entries with "split" "test" and "val" when the file says
    (training entries are left out), a separate validation file, or else even and odd entries."""
    test, validation = retrieval_split_entries(path, validation_path)
    return (load_albef_retrieval_json(path, image_root, image_size, limit, test),
            load_albef_retrieval_json(validation_path or path, image_root, image_size, limit, validation))


def retrieval_split_entries(path: str, validation_path: str | None) -> tuple[list[dict], list[dict]]:
    entries = read_retrieval_entries(path)
    if validation_path is not None:
        return entries, read_retrieval_entries(validation_path)
    if any("split" in entry for entry in entries):
        test = [entry for entry in entries if entry.get("split") == "test"]
        validation = [entry for entry in entries if entry.get("split") == "val"]
        if not test or not validation:
            raise ValueError(f"data.annotations.retrieval: {path} has {len(test)} entries with split 'test' and "
                             f"{len(validation)} with split 'val'; it needs both")
        return test, validation
    if len(entries) < 2:
        raise ValueError(f"data.annotations.retrieval: {path} has {len(entries)} entries; a test and a validation "
                         "half need at least 2")
    return entries[0::2], entries[1::2]


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
