"""ALBEF as a model family of the shared training loop (trainers/family.py)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from trainers.albef.heads import FinetuneSettings, FusedExamples, correct_predictions, finetune
from trainers.albef.inputs import AlbefInputs
from trainers.albef.model import AlbefModel
from trainers.albef.pretrain import AlbefPretraining
from trainers.albef.retrieval import recall_at_k, rerank_scores
from trainers.config import RunConfig
from trainers.family import Family

EVAL_BATCH_SIZE = 256
# A run counts as trained when its running ITC is this far below chance, ln(B + Q), and its ITM accuracy
# this far above the 2/3 that answering "no match" to every pair gets
ITC_BELOW_CHANCE = 0.1
ITM_ABOVE_PRIOR = 0.01


def build_module(cfg: RunConfig) -> AlbefPretraining:
    return AlbefPretraining(cfg, AlbefInputs(cfg.data).special_tokens)


def build_train_dataset(cfg: RunConfig) -> torch.utils.data.Dataset:
    from trainers.data import build_pretrain_dataset

    # The momentum encoders' features are the regularizers' views: no augmented copies needed. The batch
    # size makes a WebDataset epoch whole batches on every worker, as the scheduler's step count assumes.
    return build_pretrain_dataset(cfg.data, "train", augment=False, batch_size=cfg.train.batch_size,
                                  train_seed=cfg.train.seed)


def build_collate(cfg: RunConfig):
    return AlbefInputs(cfg.data).collate


# -------------------------------------------------------------------- evaluation


def tower_encoders(model: AlbefModel, inputs: AlbefInputs, device: torch.device):
    """The unimodal (images -> features, captions -> features) pair for the two-tower suite."""

    def encode_images(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return model.towers.image_features(model.towers.encode_image(inputs.images(images).to(device)))

    def encode_texts(captions: list[str]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = inputs.texts(captions)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        return model.towers.text_features(model.towers.encode_text(input_ids, attention_mask), attention_mask)

    return encode_images, encode_texts


def evaluate(module: AlbefPretraining, cfg: RunConfig, device: torch.device) -> dict[str, float]:
    """Two-tower metrics of the unimodal encoders, ALBEF retrieval, and the fine-tuned fused heads;
    on validation data too (as val/<name>) when the task sets carry it."""
    from trainers.data import build_task_sets
    from trainers.evaluate.names import VALIDATION_PREFIX
    from trainers.evaluate.suite import evaluate_two_tower

    inputs = AlbefInputs(cfg.data)
    tasks = build_task_sets(cfg.data)
    scored = {"": tasks} | ({VALIDATION_PREFIX: tasks.validation} if tasks.validation is not None else {})
    pretrained = copy.deepcopy(module.model).eval()
    wanted = set(cfg.eval.tasks)
    # retrieval is ALBEF's own (ITC shortlist + ITM rerank); the suite does the rest
    two_tower_config = cfg.eval.model_copy(update={"tasks": [t for t in cfg.eval.tasks if t != "retrieval"]})
    with torch.no_grad():
        metrics = evaluate_two_tower(*tower_encoders(pretrained, inputs, device), tasks, two_tower_config)
        for prefix, split in scored.items():
            if "retrieval" in wanted and split.retrieval is not None:
                recalls = retrieval_metrics(pretrained, inputs, split.retrieval, device)
                metrics |= {f"{prefix}{name}": value for name, value in recalls.items()}
    metrics |= pretraining_verdict(module)
    settings = FinetuneSettings(
        epochs=cfg.eval.finetune_epochs,
        batch_size=cfg.eval.finetune_batch_size,
        lr=cfg.eval.finetune_lr or cfg.train.lr,
        seed=cfg.train.seed,
    )
    preprocess = (inputs.images, inputs.texts)
    for name, (num_classes, train, test) in fused_task_examples(tasks, wanted).items():
        validation = fused_task_examples(tasks.validation, {name}) if tasks.validation is not None else {}
        # per split ("" test, "val/" validation) and control: which held-out examples the head got right
        correct: dict[str, dict[str, torch.Tensor]] = {"": {}, VALIDATION_PREFIX: {}}
        # the text-only control: the same head fine-tuned and tested with every image another example's
        for control, shuffle in (("accuracy", False), ("text_only_accuracy", True)):
            def examples(split: FusedExamples, offset: int, shuffle=shuffle) -> FusedExamples:
                return split.with_images_shuffled(settings.seed + offset) if shuffle else split

            classifier = finetune(pretrained, num_classes, examples(train, 0), settings, preprocess, device)
            correct[""][control] = correct_predictions(
                classifier, examples(test, 1), preprocess, device, settings.batch_size
            )
            if name in validation:
                _, validation_train, held_out = validation[name]
                if getattr(tasks.validation, name).train is not getattr(tasks, name).train:
                    # the validation set trains its own head only when its training part differs
                    classifier = finetune(
                        pretrained, num_classes, examples(validation_train, 0), settings, preprocess, device
                    )
                correct[VALIDATION_PREFIX][control] = correct_predictions(
                    classifier, examples(held_out, 2), preprocess, device, settings.batch_size
                )
        for prefix, by_control in correct.items():
            metrics |= {f"{prefix}{name}/{key}": value for key, value in head_metrics(by_control).items()}
    return metrics


def head_metrics(correct: dict[str, torch.Tensor]) -> dict[str, float]:
    """accuracy and text_only_accuracy from per-example correctness, and with both the image margin and its
    standard error: the control sees the same texts in the same order, so the two are paired per example."""
    metrics = {control: float(hits.float().mean()) for control, hits in correct.items()}
    if {"accuracy", "text_only_accuracy"} <= correct.keys():
        difference = correct["accuracy"].float() - correct["text_only_accuracy"].float()
        metrics["image_margin"] = float(difference.mean())
        metrics["image_margin_se"] = float(difference.std() / math.sqrt(len(difference))) if len(difference) > 1 \
            else math.nan
    return metrics


def pretraining_verdict(module: AlbefPretraining) -> dict[str, float]:
    """albef/*: the running ITC (and its chance value), ITM accuracy (and its prior), the cosine between the
    online and momentum features (the regularizers' views), and albef/trained, 1 when ITC is below chance and
    ITM above its prior, else 0: a trial that learnt nothing linking images and texts, not to be compared."""
    progress = module.training_progress()
    trained = (progress["itc_loss"] < progress["itc_chance"] - ITC_BELOW_CHANCE
               and progress["itm_accuracy"] > progress["itm_prior_accuracy"] + ITM_ABOVE_PRIOR)
    return {f"albef/{name}": value for name, value in progress.items()} | {"albef/trained": float(trained)}


def fused_task_examples(tasks, wanted: set[str]) -> dict[str, tuple[int, FusedExamples, FusedExamples]]:
    """{task: (number of classes, train examples, test examples)} for the requested VQA / NLVR / VE sets."""
    from trainers.data import VE_LABELS

    examples = {}
    if "vqa" in wanted and tasks.vqa is not None:
        vqa = tasks.vqa
        examples["vqa"] = (
            len(vqa.answer_vocab),
            *(FusedExamples((s.images,), list(s.questions), s.answers) for s in (vqa.train, vqa.test)),
        )
    if "nlvr" in wanted and tasks.nlvr is not None:
        examples["nlvr"] = (
            2,
            *(
                FusedExamples((s.images_left, s.images_right), list(s.statements), s.labels)
                for s in (tasks.nlvr.train, tasks.nlvr.test)
            ),
        )
    if "ve" in wanted and tasks.ve is not None:
        examples["ve"] = (
            len(VE_LABELS),
            *(FusedExamples((s.images,), list(s.hypotheses), s.labels) for s in (tasks.ve.train, tasks.ve.test)),
        )
    return examples


def retrieval_metrics(model: AlbefModel, inputs: AlbefInputs, retrieval, device: torch.device) -> dict[str, float]:
    image_embeds = torch.cat(
        [
            model.towers.encode_image(inputs.images(chunk).to(device))
            for chunk in retrieval.images.split(EVAL_BATCH_SIZE)
        ]
    )
    input_ids, attention_mask = inputs.texts(list(retrieval.captions))
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    text_embeds = torch.cat(
        [
            model.towers.encode_text(ids, mask)
            for ids, mask in zip(input_ids.split(EVAL_BATCH_SIZE), attention_mask.split(EVAL_BATCH_SIZE), strict=True)
        ]
    )
    similarity = (
        model.towers.image_features(image_embeds)["shared"]
        @ model.towers.text_features(text_embeds, attention_mask)["shared"].T
    )
    i2t, t2i = rerank_scores(model, image_embeds, text_embeds, attention_mask, similarity.float())
    return {f"retrieval/{name}": value for name, value in recall_at_k(i2t, t2i, retrieval.caption_to_image).items()}


def embedding_sample(module: AlbefPretraining, cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """Unimodal image and text embeddings of evaluation pairs, for the report's PCA view."""
    from trainers.data import build_task_sets
    from trainers.evaluate.suite import embedding_sample as sample

    model = copy.deepcopy(module.model).eval()
    with torch.no_grad():
        return sample(*tower_encoders(model, AlbefInputs(cfg.data), device), build_task_sets(cfg.data))


ALBEF_FAMILY = Family(
    build_module=build_module,
    build_train_dataset=build_train_dataset,
    build_collate=build_collate,
    evaluate=evaluate,
    embedding_sample=embedding_sample,
)
