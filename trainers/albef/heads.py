"""ALBEF's downstream heads on the fused [CLS]: VQA (answer classification), NLVR (two images,
true/false) and visual entailment (three classes), and their fine-tuning.

ALBEF decodes VQA answers with a generative decoder ranked over the answer list; a classifier
over the closed answer vocabulary is the common discriminative variant and what the synthetic
world's closed answer set calls for. NLVR fuses the statement with each image separately and
classifies the two fused [CLS] vectors together (ALBEF shares the fusion layers the same way).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainers.albef.model import AlbefModel

FINETUNE_WEIGHT_DECAY = 0.02


@dataclass(frozen=True)
class FusedExamples:
    """Labelled (image(s), text) examples: `images` holds one uint8 [N, 3, H, W] tensor per image slot
    (two for NLVR), `texts` the N questions / statements / hypotheses, `labels` int64 [N]."""

    images: tuple[torch.Tensor, ...]
    texts: list[str]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.texts)

    def batch(self, index: torch.Tensor) -> FusedExamples:
        return FusedExamples(
            tuple(images[index] for images in self.images),
            [self.texts[i] for i in index.tolist()],
            self.labels[index],
        )


# uint8 images -> normalized model input; captions -> (input_ids, attention_mask)
ImagePreprocess = Callable[[torch.Tensor], torch.Tensor]
TextPreprocess = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


class FusedClassifier(nn.Module):
    """Fused [CLS] of (text, image) for each image slot, concatenated -> MLP -> class logits."""

    def __init__(self, model: AlbefModel, num_classes: int, num_images: int = 1):
        super().__init__()
        self.model = model
        hidden = model.hidden_size
        self.head = nn.Sequential(
            nn.Linear(hidden * num_images, hidden * 2), nn.ReLU(), nn.Linear(hidden * 2, num_classes)
        )

    def forward(
        self, images: tuple[torch.Tensor, ...], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        towers = self.model.towers
        text_embeds = towers.encode_text(input_ids, attention_mask)  # (B, T, H)
        fused_cls = [self.model.fuse(text_embeds, attention_mask, towers.encode_image(image))[:, 0] for image in images]
        return self.head(torch.cat(fused_cls, dim=1))  # (B, C)


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int
    batch_size: int
    lr: float
    seed: int = 0


def finetune_and_test(
    pretrained: AlbefModel,
    num_classes: int,
    train: FusedExamples,
    test: FusedExamples,
    settings: FinetuneSettings,
    preprocess: tuple[ImagePreprocess, TextPreprocess],
    device: torch.device,
) -> float:
    """Fine-tune a copy of `pretrained` with a new head on `train`; accuracy on `test`."""
    classifier = finetune(pretrained, num_classes, train, settings, preprocess, device)
    return accuracy(classifier, test, preprocess, device, settings.batch_size)


def finetune(
    pretrained: AlbefModel,
    num_classes: int,
    train: FusedExamples,
    settings: FinetuneSettings,
    preprocess: tuple[ImagePreprocess, TextPreprocess],
    device: torch.device,
) -> FusedClassifier:
    """A new head on a copy of `pretrained`, both trained on `train` with AdamW (ALBEF fine-tunes all weights)."""
    classifier = FusedClassifier(copy.deepcopy(pretrained), num_classes, len(train.images)).to(device)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=settings.lr, weight_decay=FINETUNE_WEIGHT_DECAY)
    generator = torch.Generator().manual_seed(settings.seed)
    classifier.train()
    for _ in range(settings.epochs):
        for index in torch.randperm(len(train), generator=generator).split(settings.batch_size):
            logits = _logits(classifier, train.batch(index), preprocess, device)
            loss = F.cross_entropy(logits.float(), train.labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return classifier


@torch.no_grad()
def accuracy(
    classifier: FusedClassifier,
    examples: FusedExamples,
    preprocess: tuple[ImagePreprocess, TextPreprocess],
    device: torch.device,
    batch_size: int,
) -> float:
    classifier.eval()
    correct = 0
    for index in torch.arange(len(examples)).split(batch_size):
        batch = examples.batch(index)
        predictions = _logits(classifier, batch, preprocess, device).argmax(dim=1).cpu()
        correct += int((predictions == batch.labels).sum())
    return correct / max(1, len(examples))


def _logits(classifier, batch: FusedExamples, preprocess, device) -> torch.Tensor:
    preprocess_images, preprocess_texts = preprocess
    input_ids, attention_mask = preprocess_texts(batch.texts)
    images = tuple(preprocess_images(image).to(device) for image in batch.images)
    return classifier(images, input_ids.to(device), attention_mask.to(device))
