"""The CLIP two-tower family: an open_clip model, the paper's regularizers, and its evaluation.

The model is whatever `open_clip.create_model` builds (ViT-B-32, RN50, ... or the small
configs shipped in trainers/model_configs). The regularizers need two things open_clip does
not give: the pooled encoder output before the projection (DFS heads are projections
parallel to the model's own; on ResNet towers the attention pool's output projection `c_proj`
is that projection) and a second pass over augmented views. Both exist only when an
active term needs them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from open_clip.timm_model import TimmModel
from torch import nn

import trainers.small_cnn  # noqa: F401  (registers the tiny-cnn image tower with timm)
from trainers.config import RunConfig
from trainers.family import Batch, Family, TrainingModule
from trainers.regularizers import CONTRASTIVE_TERMS, REGULARIZER_TERMS, LatentStructureLoss

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

# open_clip clamps the learned logit scale at ln(100) after every step
MAX_LOGIT_SCALE = 4.6052


def create_open_clip_model(arch: str, pretrained: str | None) -> nn.Module:
    """open_clip's factory; `pretrained` is a tag (needs a hub) or a local checkpoint file."""
    if arch not in open_clip.list_models():
        raise ValueError(f"model.arch: unknown open_clip architecture {arch!r}")
    looks_like_file = pretrained and ("/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors")))
    if looks_like_file and not Path(pretrained).is_file():
        raise ValueError(f"model.pretrained: {pretrained} does not exist")
    if pretrained:
        return open_clip.create_model(arch, pretrained=pretrained)
    # training from scratch is the point here; open_clip would warn about it in every trial
    root = logging.getLogger()
    root.addFilter(_from_scratch_warning)
    try:
        return open_clip.create_model(arch, pretrained=None)
    finally:
        root.removeFilter(_from_scratch_warning)


def _from_scratch_warning(record: logging.LogRecord) -> bool:
    return "No pretrained weights loaded" not in record.getMessage()


class _ProjectionHead(nn.Module):
    """Applies a projection taken out of an open_clip tower (a parameter matrix or a Linear)."""

    def __init__(self, projection: nn.Parameter | nn.Module | None) -> None:
        super().__init__()
        if isinstance(projection, nn.Parameter):
            self.weight = projection
            self.linear = None
        else:
            self.weight = None
            self.linear = projection if projection is not None else nn.Identity()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled @ self.weight if self.weight is not None else self.linear(pooled)


class _AttentionPoolBeforeProjection(nn.Module):
    """open_clip's ResNet attention pool (AttentionPool2d) without its output projection `c_proj`:
    the attention of the mean-pooled query over the feature map, heads concatenated. `c_proj` then is
    the shared projection, so DFS heads and pooled probes read what precedes it, as on ViT towers.
    Same parameters (and state-dict names) as the pool it replaces, less `c_proj`."""

    def __init__(self, pool: AttentionPool2d) -> None:
        super().__init__()
        self.positional_embedding = pool.positional_embedding
        self.k_proj, self.q_proj, self.v_proj = pool.k_proj, pool.q_proj, pool.v_proj
        self.num_heads = pool.num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        n, length, width = tokens.shape
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, -1, heads, width // heads).transpose(1, 2)

        # only the mean token's output is kept (AttentionPool2d returns x[0]), so only it queries
        attended = F.scaled_dot_product_attention(split(self.q_proj(tokens[:, :1])), split(self.k_proj(tokens)),
                                                  split(self.v_proj(tokens)))
        return attended.transpose(1, 2).reshape(n, width)


def _split_resnet_attention_pool(visual: ModifiedResNet) -> _ProjectionHead:
    """Take the attention pool's `c_proj` out as the image tower's shared projection."""
    pool = visual.attnpool
    visual.attnpool = _AttentionPoolBeforeProjection(pool)
    return _ProjectionHead(pool.c_proj)


def _take_projection(owner: nn.Module, attribute: str) -> _ProjectionHead:
    """Move a tower's final projection out of it, so the tower returns its pooled output."""
    projection = getattr(owner, attribute, None)
    if projection is not None:
        # a module inside a head's nn.Sequential is replaced, not removed, so the head still runs
        setattr(owner, attribute, nn.Identity() if isinstance(projection, nn.Module) else None)
    return _ProjectionHead(projection)


def _image_projection_owner(visual: nn.Module) -> nn.Module:
    """Where an image tower keeps its projection `proj`: open_clip's timm towers hold it in `head`."""
    return visual.head if isinstance(visual, TimmModel) else visual


def _output_width(head: _ProjectionHead, embed_dim: int) -> int:
    if head.weight is not None:
        return head.weight.shape[0]
    if isinstance(head.linear, nn.Linear):
        return head.linear.in_features
    return embed_dim


# Parameter names of each tower in ClipTrainingModule: open_clip's text tower is spread over the model's
# top level (no `model.text` for its built-in transformer), and the projections are our own modules.
IMAGE_TOWER_PREFIXES = ("model.visual.", "image_projection.", "image_independent.")
TEXT_TOWER_PREFIXES = ("model.token_embedding", "model.positional_embedding", "model.transformer.", "model.ln_final.",
                       "model.text.", "text_projection.", "text_independent.")


class ClipTrainingModule(TrainingModule):
    loss_names = (*CONTRASTIVE_TERMS, *REGULARIZER_TERMS)
    metric_names = ("logit_scale",)

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        self.model = create_open_clip_model(cfg.model.arch, cfg.model.pretrained)
        embed_dim = open_clip.get_model_config(cfg.model.arch)["embed_dim"]
        if isinstance(self.model.visual, ModifiedResNet):
            self.image_projection = _split_resnet_attention_pool(self.model.visual)
        else:
            self.image_projection = _take_projection(_image_projection_owner(self.model.visual), "proj")
        self.text_projection = _take_projection(self.model, "text_projection")
        self.criterion = LatentStructureLoss(cfg.regularizers)
        self.image_independent: nn.Module | None = None
        self.text_independent: nn.Module | None = None
        if self.criterion.needs_independent_features:
            self.image_independent = nn.Linear(_output_width(self.image_projection, embed_dim), embed_dim, bias=False)
            self.text_independent = nn.Linear(_output_width(self.text_projection, embed_dim), embed_dim, bias=False)

    # ---------------------------------------------------------------- encoders
    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.model.visual(images)
        return self._features(pooled, self.image_projection, self.image_independent)

    def encode_texts(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.model.encode_text(tokens)
        return self._features(pooled, self.text_projection, self.text_independent)

    @staticmethod
    def _features(pooled: torch.Tensor, projection: nn.Module, independent: nn.Module | None) -> dict:
        features = {"pooled": pooled, "shared": F.normalize(projection(pooled), dim=-1)}
        if independent is not None:
            features["independent"] = F.normalize(independent(pooled), dim=-1)
        return features

    # ---------------------------------------------------------------- training
    def forward(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        image = self.encode_images(batch["image"])
        text = self.encode_texts(batch["text"])
        views: dict[str, Any] = {}
        if self.criterion.needs_augmented_views and "image_aug" in batch:
            image_aug = self.encode_images(batch["image_aug"])
            text_aug = self.encode_texts(batch["text_aug"])
            views = {"image_aug": image_aug["shared"], "text_aug": text_aug["shared"]}
            if self.image_independent is not None:
                views |= {
                    "image_independent_aug": image_aug["independent"],
                    "text_independent_aug": text_aug["independent"],
                }
        if self.image_independent is not None:
            views |= {"image_independent": image["independent"], "text_independent": text["independent"]}
        logit_scale = self.model.logit_scale.exp()
        losses = self.criterion(image["shared"], text["shared"], logit_scale, **views)
        return losses, {"logit_scale": logit_scale.detach()}  # a tensor: no host sync per step

    def after_optimizer_step(self) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def tower_of(self, parameter_name: str) -> Literal["image", "text"] | None:
        if parameter_name.startswith(IMAGE_TOWER_PREFIXES):
            return "image"
        if parameter_name.startswith(TEXT_TOWER_PREFIXES):
            return "text"
        return None  # the logit scale


# -------------------------------------------------------------------- data


def image_size_of(arch: str) -> int:
    size = open_clip.get_model_config(arch)["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


def images_to_model_input(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float, resized to the model's input, normalized as OpenAI CLIP."""
    x = images.float().div_(255)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class ClipCollate:
    """List of data set items -> Batch: stacked, normalized images and tokenized captions."""

    def __init__(self, cfg: RunConfig) -> None:
        self.image_size = image_size_of(cfg.model.arch)
        self.tokenizer = open_clip.get_tokenizer(cfg.model.arch)

    def __call__(self, items: list[dict[str, Any]]) -> Batch:
        batch = {
            "image": images_to_model_input(torch.stack([item["image"] for item in items]), self.image_size),
            "text": self.tokenizer([item["caption"] for item in items]),
        }
        if "image_aug" in items[0]:
            batch["image_aug"] = images_to_model_input(
                torch.stack([item["image_aug"] for item in items]), self.image_size
            )
            batch["text_aug"] = self.tokenizer([item["caption_aug"] for item in items])
        return batch


def build_train_dataset(cfg: RunConfig) -> torch.utils.data.Dataset:
    from trainers.data import build_pretrain_dataset

    needs_views = LatentStructureLoss(cfg.regularizers).needs_augmented_views
    return build_pretrain_dataset(cfg.data, "train", augment=needs_views, batch_size=cfg.train.batch_size,
                                  train_seed=cfg.train.seed)


# -------------------------------------------------------------------- evaluation


def tower_encoders(
    module: ClipTrainingModule, cfg: RunConfig, device: torch.device
) -> tuple[Callable[[torch.Tensor], dict], Callable[[list[str]], dict]]:
    """The (images -> features, captions -> features) pair that the evaluation suite calls."""
    image_size = image_size_of(cfg.model.arch)
    tokenizer = open_clip.get_tokenizer(cfg.model.arch)

    def encode_images(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return module.encode_images(images_to_model_input(images, image_size).to(device))

    def encode_texts(captions: list[str]) -> dict[str, torch.Tensor]:
        return module.encode_texts(tokenizer(captions).to(device))

    return encode_images, encode_texts


def evaluate(module: ClipTrainingModule, cfg: RunConfig, device: torch.device) -> dict[str, float]:
    from trainers.data import build_task_sets
    from trainers.evaluate.suite import evaluate_two_tower

    module.eval()
    encode_images, encode_texts = tower_encoders(module, cfg, device)
    with torch.no_grad():
        return evaluate_two_tower(encode_images, encode_texts, build_task_sets(cfg.data), cfg.eval)


def embedding_sample(module: ClipTrainingModule, cfg: RunConfig, device: torch.device) -> dict:
    """Image and text embeddings of evaluation pairs, for the report's PCA view."""
    from trainers.data import build_task_sets
    from trainers.evaluate.suite import embedding_sample as sample

    module.eval()
    encode_images, encode_texts = tower_encoders(module, cfg, device)
    with torch.no_grad():
        return sample(encode_images, encode_texts, build_task_sets(cfg.data))


CLIP_FAMILY = Family(
    build_module=ClipTrainingModule,
    build_train_dataset=build_train_dataset,
    build_collate=ClipCollate,
    evaluate=evaluate,
    embedding_sample=embedding_sample,
)
