"""ALBEF's downstream heads on the fused [CLS]: VQA (answer classification), NLVR (two images,
true/false) and visual entailment (three classes), and their fine-tuning.

ALBEF decodes VQA answers with a generative decoder ranked over the answer list; a classifier
over the closed answer vocabulary is the common discriminative variant and what the synthetic
world's closed answer set calls for. NLVR lets both images interact inside the fusion layers, as
ALBEF's model_nlvr.py does: every fusion layer cross-attends to each image with its own copy of the
pre-trained cross-attention and merges the two results with a learned layer, so later layers see both.

Fine-tuning has its own learning rate, a linear warm-up and a cosine decay (ALBEF's fine-tuning
configs), and every head has a text-only control: the same head fine-tuned and tested with each
image replaced by another example's (`FusedExamples.with_images_shuffled`), which learns what the
text alone tells.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainers.albef.model import AlbefModel, FusionEncoder, FusionLayer, additive_mask

FINETUNE_WEIGHT_DECAY = 0.02
FINETUNE_WARMUP_FRACTION = 0.1


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

    def with_images_shuffled(self, seed: int) -> FusedExamples:
        """The same texts and labels with every image slot permuted: the text-only control's examples."""
        generator = torch.Generator().manual_seed(seed)
        return FusedExamples(
            tuple(images[torch.randperm(len(images), generator=generator)] for images in self.images),
            self.texts,
            self.labels,
        )


# uint8 images -> normalized model input; captions -> (input_ids, attention_mask)
ImagePreprocess = Callable[[torch.Tensor], torch.Tensor]
TextPreprocess = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


class TwinFusionLayer(nn.Module):
    """A pre-trained fusion layer whose cross-attention is split into one copy per image, the two outputs
    merged by a learned (2H -> H) layer that starts as their mean (ALBEF's twin BertSelfOutput + merge_layer)."""

    def __init__(self, layer: FusionLayer):
        super().__init__()
        hidden = layer.output.dense.out_features
        self.attention, self.intermediate, self.output = layer.attention, layer.intermediate, layer.output
        self.crossattention = nn.ModuleList([layer.crossattention, copy.deepcopy(layer.crossattention)])
        self.merge = nn.Linear(2 * hidden, hidden)
        with torch.no_grad():
            self.merge.weight.copy_(torch.cat([torch.eye(hidden), torch.eye(hidden)], dim=1) / 2)
            self.merge.bias.zero_()

    def forward(self, hidden_states: torch.Tensor, text_mask: torch.Tensor,
                image_embeds: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        hidden_states, _ = self.attention(hidden_states, attention_mask=text_mask)
        attended = [attention(hidden_states, encoder_hidden_states=image, encoder_attention_mask=None)[0]
                    for attention, image in zip(self.crossattention, image_embeds, strict=True)]
        hidden_states = self.merge(torch.cat(attended, dim=-1))
        return self.output(self.intermediate(hidden_states), hidden_states)


class TwinFusionEncoder(nn.Module):
    """The fusion encoder for a statement about two images (NLVR), built from the pre-trained one."""

    def __init__(self, fusion: FusionEncoder):
        super().__init__()
        self.layers = nn.ModuleList([TwinFusionLayer(layer) for layer in fusion.layers])

    def forward(self, text_embeds: torch.Tensor, attention_mask: torch.Tensor,
                image_embeds: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        text_mask = additive_mask(attention_mask, text_embeds.dtype)
        hidden_states = text_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, text_mask, image_embeds)
        return hidden_states


class FusedClassifier(nn.Module):
    """Fused [CLS] of the text with its image (one image: VQA, VE) or with both images interacting in the
    fusion layers (two: NLVR) -> MLP -> class logits."""

    def __init__(self, model: AlbefModel, num_classes: int, num_images: int = 1):
        super().__init__()
        if num_images not in (1, 2):
            raise ValueError(f"num_images: {num_images} (a fused head takes one or two images)")
        self.model = model
        self.twin_fusion = TwinFusionEncoder(model.fusion) if num_images == 2 else None
        hidden = model.hidden_size
        self.head = nn.Sequential(nn.Linear(hidden, hidden * 2), nn.ReLU(), nn.Linear(hidden * 2, num_classes))

    def forward(
        self, images: tuple[torch.Tensor, ...], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        towers = self.model.towers
        text_embeds = towers.encode_text(input_ids, attention_mask)  # (B, T, H)
        image_embeds = tuple(towers.encode_image(image) for image in images)
        if self.twin_fusion is not None:
            fused = self.twin_fusion(text_embeds, attention_mask, image_embeds)
        else:
            fused = self.model.fuse(text_embeds, attention_mask, image_embeds[0])
        return self.head(self.model.fused_summary(fused, attention_mask))  # (B, C)


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    warmup_fraction: float = FINETUNE_WARMUP_FRACTION


def finetune(
    pretrained: AlbefModel,
    num_classes: int,
    train: FusedExamples,
    settings: FinetuneSettings,
    preprocess: tuple[ImagePreprocess, TextPreprocess],
    device: torch.device,
) -> FusedClassifier:
    """A new head on a copy of `pretrained`, both trained on `train` with AdamW (ALBEF fine-tunes all weights),
    the learning rate warmed up linearly over the first `warmup_fraction` of the steps, then cosine to 0."""
    torch.manual_seed(settings.seed)  # the head's initialisation
    classifier = FusedClassifier(copy.deepcopy(pretrained), num_classes, len(train.images)).to(device)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=settings.lr, weight_decay=FINETUNE_WEIGHT_DECAY)
    total_steps = settings.epochs * math.ceil(len(train) / settings.batch_size)
    warmup_steps = max(1, round(settings.warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(settings.seed)
    classifier.train()
    for _ in range(settings.epochs):
        for index in torch.randperm(len(train), generator=generator).split(settings.batch_size):
            logits = _logits(classifier, train.batch(index), preprocess, device)
            loss = F.cross_entropy(logits.float(), train.labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return classifier


@torch.no_grad()
def correct_predictions(
    classifier: FusedClassifier,
    examples: FusedExamples,
    preprocess: tuple[ImagePreprocess, TextPreprocess],
    device: torch.device,
    batch_size: int,
) -> torch.Tensor:
    """bool [N]: whether the classifier's answer to each example is its label."""
    classifier.eval()
    hits = []
    for index in torch.arange(len(examples)).split(batch_size):
        batch = examples.batch(index)
        hits.append(_logits(classifier, batch, preprocess, device).argmax(dim=1).cpu() == batch.labels)
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def accuracy(
    classifier: FusedClassifier,
    examples: FusedExamples,
    preprocess: tuple[ImagePreprocess, TextPreprocess],
    device: torch.device,
    batch_size: int,
) -> float:
    hits = correct_predictions(classifier, examples, preprocess, device, batch_size)
    return float(hits.float().mean()) if len(hits) else 0.0


def _logits(classifier, batch: FusedExamples, preprocess, device) -> torch.Tensor:
    preprocess_images, preprocess_texts = preprocess
    input_ids, attention_mask = preprocess_texts(batch.texts)
    images = tuple(preprocess_images(image).to(device) for image in batch.images)
    return classifier(images, input_ids.to(device), attention_mask.to(device))
