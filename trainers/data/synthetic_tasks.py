"""Downstream task sets drawn from the synthetic world.

Training parts (probes, fused heads) come from the "task_train" split, scored parts from the "test"
split and, for selecting hyperparameters, from the "validation" split (`TaskSets.validation`); all
are disjoint from pre-training's "train" split. Each has `eval_size` scenes, rendered once: every
task of a split shares one image tensor, so that evaluation encodes each split's images once.
"""

from __future__ import annotations

import numpy as np
import torch

from trainers.config import DataConfig
from trainers.data.captions import scene_captions
from trainers.data.synthetic import WorldSplit, world_split
from trainers.data.tasks import (
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
from trainers.data.world import (
    BACKGROUNDS,
    COLOURS,
    COUNT_WORDS,
    MATERIALS,
    OWNERS,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLIT_IDS,
    TEXTURES,
    Scenes,
)

ZEROSHOT_TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "there is a {} in the picture.", "a {} shape.")
# The main object's colour, the second zero-shot set: colour binds to words long before shape does
# in a short CPU run, so the pair spans an easy and a hard classification.
COLOUR_TEMPLATES = ("a photo of a {} object.", "a {} thing.", "there is something {} in the picture.", "it is {}.")
ZEROSHOT_SETS = ("synthetic_shapes", "synthetic_colours")  # the metrics' names: zeroshot/<set>/top{1,3,5}
NUM_RETRIEVAL_PARAPHRASES = 2
# (probe name, attribute, kind, number of classes); "image_only"/"text_only" are the info-gap targets:
# the image side's colour (drawn always, stated in 20% of captions) and the text side's owner (world.py)
PROBES = (
    ("class", "class", "shared", len(SHAPES)),
    ("image_only", "colour", "image_only", len(COLOURS)),
    ("text_only", "owner", "text_only", len(OWNERS)),
    ("texture", "texture", "image_only", len(TEXTURES)),
    ("size", "size", "shared", len(SIZES)),
    ("background", "background", "image_only", len(BACKGROUNDS)),
    ("material", "material", "text_only", len(MATERIALS)),
)
VQA_QUESTIONS = (
    "what colour is the {shape} {position}?",
    "what shape is the {colour} object {position}?",
    "how many objects are there?",
    "what size is the {colour} {shape}?",
)
ANSWER_VOCAB = (*COLOURS, *SHAPES, *COUNT_WORDS, *SIZES)
NLVR_STATEMENTS = (
    "the {side} image contains a {colour} {shape}.",
    "both images contain a {shape}.",
    "the left image has more objects than the right image.",
    "the {shape} in the left image is larger than the {other} in the right image.",
)
VE_HYPOTHESES = (
    "there is a {colour} {shape}.",
    "the number of objects is {count}.",
    "the {shape} belongs to {owner}.",
    "the {colour} {shape} is made of {material}.",
)
TASK_PHRASES = (
    *ZEROSHOT_TEMPLATES, *COLOUR_TEMPLATES, *VQA_QUESTIONS, *NLVR_STATEMENTS, *VE_HYPOTHESES, "left", "right",
)


def _task_rng(data: DataConfig, split: str, task: int) -> np.random.Generator:
    return np.random.default_rng([data.world_seed, SPLIT_IDS[split], 1000 + task])


def _images(split: WorldSplit) -> torch.Tensor:
    return torch.from_numpy(np.array(split.images))  # a writable copy of the (memory-mapped) cache


def build_synthetic_task_sets(data: DataConfig) -> TaskSets:
    task_train = world_split(data, "task_train", data.eval_size)
    task_train_images = _images(task_train)
    vqa_train, nlvr_train, ve_train = (
        vqa_split(data, "task_train", task_train, task_train_images),
        nlvr_split(data, "task_train", task_train, task_train_images),
        ve_split(data, "task_train", task_train, task_train_images),
    )

    def scored_on(split_name: str) -> TaskSets:
        split = world_split(data, split_name, data.eval_size)
        images = _images(split)
        return TaskSets(
            zeroshot=[zeroshot_task(split, images), colour_zeroshot_task(split, images)],
            retrieval=retrieval_task(split, images),
            probes=probe_tasks(task_train, split, task_train_images, images),
            vqa=VQATask(vqa_train, vqa_split(data, split_name, split, images), list(ANSWER_VOCAB)),
            nlvr=NLVRTask(nlvr_train, nlvr_split(data, split_name, split, images)),
            ve=VETask(ve_train, ve_split(data, split_name, split, images)),
        )

    tasks = scored_on("test")
    tasks.validation = scored_on("validation")
    return tasks


def zeroshot_task(split: WorldSplit, images: torch.Tensor) -> ZeroShotTask:
    return ZeroShotTask(name=ZEROSHOT_SETS[0], classnames=list(SHAPES), templates=list(ZEROSHOT_TEMPLATES),
                        images=images, labels=torch.from_numpy(split.scenes.label.copy()))


def colour_zeroshot_task(split: WorldSplit, images: torch.Tensor) -> ZeroShotTask:
    return ZeroShotTask(name=ZEROSHOT_SETS[1], classnames=list(COLOURS), templates=list(COLOUR_TEMPLATES),
                        images=images, labels=torch.from_numpy(split.scenes.colour[:, -1].copy()))


def retrieval_task(split: WorldSplit, images: torch.Tensor) -> RetrievalTask:
    captions = [c for k in range(NUM_RETRIEVAL_PARAPHRASES) for c in scene_captions(split.scenes, k)]
    caption_to_image = torch.arange(len(split)).repeat(NUM_RETRIEVAL_PARAPHRASES)
    return RetrievalTask(images=images, captions=captions, caption_to_image=caption_to_image)


def probe_tasks(train: WorldSplit, test: WorldSplit, train_images: torch.Tensor,
                test_images: torch.Tensor) -> list[ProbeTask]:
    train_attributes, test_attributes = train.scenes.attributes(), test.scenes.attributes()
    train_captions, test_captions = list(train.captions), list(test.captions)
    return [
        ProbeTask(name=name, kind=kind, train_images=train_images, train_captions=train_captions,
                  train_labels=torch.from_numpy(train_attributes[attribute].copy()),
                  test_images=test_images, test_captions=test_captions,
                  test_labels=torch.from_numpy(test_attributes[attribute].copy()), num_classes=num_classes)
        for name, attribute, kind, num_classes in PROBES
    ]


def _main_words(scenes: Scenes, i: int) -> dict[str, str]:
    return {"shape": SHAPES[scenes.shape[i, -1]], "colour": COLOURS[scenes.colour[i, -1]],
            "position": POSITIONS[scenes.position[i]], "size": SIZES[scenes.size[i]],
            "count": COUNT_WORDS[scenes.num_objects[i] - 1]}


def vqa_split(data: DataConfig, split_name: str, split: WorldSplit, images: torch.Tensor) -> VQASplit:
    rng, scenes = _task_rng(data, split_name, 0), split.scenes
    questions, answers = [], []
    for i, kind in enumerate(rng.integers(len(VQA_QUESTIONS), size=len(split))):
        words = _main_words(scenes, i)
        questions.append(VQA_QUESTIONS[kind].format(**words))
        answers.append(ANSWER_VOCAB.index(words[("colour", "shape", "count", "size")[kind]]))
    return VQASplit(images=images, questions=questions, answers=torch.tensor(answers))


def _objects(scenes: Scenes, i: int) -> set[tuple[int, int]]:
    return {(int(c), int(s)) for s, c in zip(scenes.shape[i], scenes.colour[i], strict=True) if s >= 0}


def _absent_object(rng: np.random.Generator, present: set[tuple[int, int]]) -> tuple[int, int]:
    while True:
        candidate = (int(rng.integers(len(COLOURS))), int(rng.integers(len(SHAPES))))
        if candidate not in present:
            return candidate


def _nlvr_statement(rng: np.random.Generator, scenes: Scenes, left: int, right: int) -> tuple[str, bool]:
    kind = int(rng.integers(len(NLVR_STATEMENTS)))
    if kind == 0:  # balanced: half true (a present object), half false (an absent one)
        side, i = ("left", left) if rng.random() < 0.5 else ("right", right)
        present = _objects(scenes, i)
        truth = bool(rng.random() < 0.5)
        colour, shape = sorted(present)[rng.integers(len(present))] if truth else _absent_object(rng, present)
        return NLVR_STATEMENTS[0].format(side=side, colour=COLOURS[colour], shape=SHAPES[shape]), truth
    if kind == 1:
        shape = int(scenes.shape[left, -1])
        return NLVR_STATEMENTS[1].format(shape=SHAPES[shape]), bool(shape in scenes.shape[right])
    if kind == 2:
        return NLVR_STATEMENTS[2], bool(scenes.num_objects[left] > scenes.num_objects[right])
    words = {"shape": SHAPES[scenes.shape[left, -1]], "other": SHAPES[scenes.shape[right, -1]]}
    return NLVR_STATEMENTS[3].format(**words), bool(scenes.radius[left, -1] > scenes.radius[right, -1])


def nlvr_split(data: DataConfig, split_name: str, split: WorldSplit, images: torch.Tensor) -> NLVRSplit:
    rng = _task_rng(data, split_name, 1)
    left = np.arange(len(split))
    right = rng.permutation(len(split))
    pairs = [_nlvr_statement(rng, split.scenes, int(a), int(b)) for a, b in zip(left, right, strict=True)]
    return NLVRSplit(images_left=images, images_right=images[torch.from_numpy(right)],
                     statements=[s for s, _ in pairs], labels=torch.tensor([int(t) for _, t in pairs]))


def _ve_hypothesis(rng: np.random.Generator, scenes: Scenes, i: int, label: int) -> str:
    words = _main_words(scenes, i)
    if label == 1:  # neutral: text-only facts, which no image can confirm or refute
        words |= {"owner": OWNERS[rng.integers(len(OWNERS))], "material": MATERIALS[rng.integers(len(MATERIALS))]}
        return VE_HYPOTHESES[2 + int(rng.integers(2))].format(**words)
    if rng.random() < 0.5:  # an object that is (entailment) or is not (contradiction) in the image
        present = _objects(scenes, i)
        colour, shape = sorted(present)[rng.integers(len(present))] if label == 0 else _absent_object(rng, present)
        return VE_HYPOTHESES[0].format(colour=COLOURS[colour], shape=SHAPES[shape])
    true_count = int(scenes.num_objects[i]) - 1  # an index into COUNT_WORDS
    # a contradiction shifts the true index by 1 .. len - 1 (mod len): never back onto the true count
    count = true_count if label == 0 else (true_count + int(rng.integers(1, len(COUNT_WORDS)))) % len(COUNT_WORDS)
    return VE_HYPOTHESES[1].format(count=COUNT_WORDS[count])


def ve_split(data: DataConfig, split_name: str, split: WorldSplit, images: torch.Tensor) -> VESplit:
    rng = _task_rng(data, split_name, 2)
    labels = rng.integers(3, size=len(split))
    hypotheses = [_ve_hypothesis(rng, split.scenes, i, int(label)) for i, label in enumerate(labels)]
    return VESplit(images=images, hypotheses=hypotheses, labels=torch.from_numpy(labels))
