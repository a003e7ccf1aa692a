"""A picture of the data a run would train and evaluate on: samples, their views, one item per task."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import IterableDataset  # noqa: E402

from trainers.config import RunConfig  # noqa: E402
from trainers.data.pretrain import build_pretrain_dataset  # noqa: E402
from trainers.data.tasks import VE_LABELS, TaskSets  # noqa: E402

NUM_SAMPLES = 6


def _show(axis, image: torch.Tensor, title: str) -> None:
    axis.imshow(image.permute(1, 2, 0).numpy())
    axis.set_title("\n".join(textwrap.wrap(title, 28)), fontsize=6)
    axis.axis("off")


def _samples(dataset) -> list[dict]:
    if isinstance(dataset, IterableDataset):  # a stream (WebDataset): its first samples
        return [item for item, _ in zip(dataset, range(NUM_SAMPLES), strict=False)]
    return [dataset[i] for i in range(min(NUM_SAMPLES, len(dataset)))]


def _task_panels(tasks: TaskSets) -> list[tuple[torch.Tensor, str]]:
    panels = []
    for task in tasks.zeroshot:
        panels.append((task.images[0], f"zero-shot {task.name}: {task.classnames[int(task.labels[0])]}"))
    if tasks.retrieval is not None:
        retrieval = tasks.retrieval
        captions = [c for c, i in zip(retrieval.captions, retrieval.caption_to_image, strict=True) if i == 0]
        panels.append((retrieval.images[0], "retrieval: " + " | ".join(captions)))
    if tasks.probes:
        labels = ", ".join(f"{p.name}={int(p.test_labels[0])}" for p in tasks.probes)
        panels.append((tasks.probes[0].test_images[0], f"probes: {labels}"))
    if tasks.vqa is not None:
        split = tasks.vqa.test
        answer = tasks.vqa.answer_vocab[int(split.answers[0])]
        panels.append((split.images[0], f"VQA: {split.questions[0]} -> {answer}"))
    if tasks.nlvr is not None:
        split = tasks.nlvr.test
        truth = "true" if split.labels[0] else "false"
        panels.append((split.images_left[0], f"NLVR left: {split.statements[0]} -> {truth}"))
        panels.append((split.images_right[0], "NLVR right"))
    if tasks.ve is not None:
        split = tasks.ve.test
        panels.append((split.images[0], f"VE: {split.hypotheses[0]} -> {VE_LABELS[int(split.labels[0])]}"))
    return panels


def render_preview(config: RunConfig, tasks: TaskSets, out: Path) -> Path:
    """Runs the checks a training run makes before Ray starts (`check_data`) first, so that a preview
    that renders means the run's data would be accepted too."""
    from trainers.train import check_data

    check_data(config)
    samples = _samples(build_pretrain_dataset(config.data, augment=True))
    panels = _task_panels(tasks)
    columns = max(NUM_SAMPLES, len(panels))
    figure, axes = plt.subplots(3, columns, figsize=(1.9 * columns, 7.2))
    for axis in axes.flat:
        axis.axis("off")
    for column, item in enumerate(samples):
        _show(axes[0, column], item["image"], item["caption"])
        _show(axes[1, column], item["image_aug"], "view: " + item["caption_aug"])
    for column, (image, title) in enumerate(panels):
        _show(axes[2, column], image, title)
    figure.suptitle(f"{config.name}: data set {config.data.dataset} (samples, augmented views, one item per task)",
                    fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=130)
    plt.close(figure)
    return out
