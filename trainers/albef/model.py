"""ALBEF's architecture on transformers 5: ViT image tower, BERT text tower, fusion encoder.

A port of salesforce/ALBEF (models/xbert.py, models/model_pretrain.py), not a copy: ALBEF's
xbert targets transformers 4.8. transformers 5's BertModel only accepts cross-attention as a
causal decoder, so the fusion layers are assembled here from BERT's building blocks with a
bidirectional self-attention (ALBEF's fusion encoder is bidirectional).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, ViTConfig, ViTModel
from transformers.models.bert.modeling_bert import (
    BertAttention,
    BertIntermediate,
    BertOnlyMLMHead,
    BertOutput,
)

from trainers.config import AlbefModelConfig

MAX_TEXT_LENGTH = 32


def build_bert_config(model_config: AlbefModelConfig, vocab_size: int, num_layers: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=model_config.hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=model_config.num_heads,
        intermediate_size=4 * model_config.hidden_size,
        max_position_embeddings=max(64, MAX_TEXT_LENGTH),
        attn_implementation="sdpa",
    )


def build_vit_config(model_config: AlbefModelConfig, image_size: int) -> ViTConfig:
    if image_size % model_config.patch_size:
        raise ValueError(f"model.patch_size: {model_config.patch_size} does not divide data.image_size {image_size}")
    return ViTConfig(
        image_size=image_size,
        patch_size=model_config.patch_size,
        hidden_size=model_config.hidden_size,
        num_hidden_layers=model_config.vision_layers,
        num_attention_heads=model_config.num_heads,
        intermediate_size=4 * model_config.hidden_size,
        attn_implementation="sdpa",
    )


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] 1/0 padding mask -> [B, 1, 1, T] additive mask that every query row shares (no causality)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class FusionLayer(nn.Module):
    """ALBEF's fusion layer: bidirectional self-attention, cross-attention to the image, feed-forward."""

    def __init__(self, config: BertConfig, layer_idx: int):
        super().__init__()
        self.attention = BertAttention(config, is_causal=False, layer_idx=layer_idx)
        self.crossattention = BertAttention(config, is_causal=False, layer_idx=layer_idx, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states: torch.Tensor, text_mask: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        hidden_states, _ = self.attention(hidden_states, attention_mask=text_mask)
        hidden_states, _ = self.crossattention(
            hidden_states, encoder_hidden_states=image_embeds, encoder_attention_mask=None
        )
        return self.output(self.intermediate(hidden_states), hidden_states)


class FusionEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layers = nn.ModuleList([FusionLayer(config, i) for i in range(config.num_hidden_layers)])
        self.apply(lambda module: _init_bert_weights(module, config.initializer_range))

    def forward(
        self, text_embeds: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor
    ) -> torch.Tensor:
        """text_embeds (B, T, H), attention_mask (B, T), image_embeds (B, P+1, H) -> (B, T, H)."""
        text_mask = additive_mask(attention_mask, text_embeds.dtype)
        hidden_states = text_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, text_mask, image_embeds)
        return hidden_states


def _init_bert_weights(module: nn.Module, std: float) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# the position embeddings' share of BERT's 0.02-std initial embeddings, relative to the word embeddings
INITIAL_POSITION_SCALE = 0.1


@torch.no_grad()
def start_text_embeddings_apart(bert: BertModel) -> None:
    """A from-scratch BERT's token outputs start alike: each token's embedding is word + position + token type,
    all drawn at the same scale, and the token type (one segment here) and the positions are shared by every
    caption. The mean-pooled features of two captions then start at cosine 0.94, and contrastive training first
    collapses them before it finds the words. Zeroing the token type and shrinking the positions starts them at
    0.39 (a batch of the embedded world's captions), as apart as the CLIP text tower's (0.36)."""
    embeddings = bert.embeddings
    embeddings.token_type_embeddings.weight.zero_()
    embeddings.position_embeddings.weight.mul_(INITIAL_POSITION_SCALE)


class ConvImageEncoder(nn.Module):
    """The small CNN (trainers/small_cnn.py) as a token encoder: its last feature map's global max (what the
    CLIP tiny-cnn tower pools, "is this pattern anywhere") as the first token, then one token per map cell,
    each projected to the hidden size with a learned position, so the fusion layers cross-attend to places."""

    def __init__(self, model_config: AlbefModelConfig, image_size: int):
        super().__init__()
        import timm

        import trainers.small_cnn  # noqa: F401  (registers latent_small_cnn with timm)

        self.cnn = timm.create_model("latent_small_cnn", num_classes=0, global_pool="")
        with torch.no_grad():
            cells = self.cnn.forward_features(torch.zeros(1, 3, image_size, image_size)).shape[2:].numel()
        hidden = model_config.hidden_size
        self.token_proj = nn.Linear(self.cnn.num_features, hidden)
        self.position = nn.Parameter(torch.randn(1, cells + 1, hidden) * 0.02)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        cells = self.cnn.forward_features(image).flatten(2).transpose(1, 2)  # (B, h*w, C)
        tokens = torch.cat([cells.amax(1, keepdim=True), cells], dim=1)
        return self.norm(self.token_proj(tokens) + self.position)  # (B, 1 + h*w, H)


class UnimodalTowers(nn.Module):
    """Everything ALBEF keeps a momentum copy of: both encoders and their ITC projections.

    The DFS independent projections (paper: a second head from the same pooled output) are
    created only when `with_independent_heads`, so a run without DFS has no unused parameters.
    """

    def __init__(self, model_config: AlbefModelConfig, image_size: int, vocab_size: int, with_independent_heads: bool):
        super().__init__()
        hidden, embed_dim = model_config.hidden_size, model_config.embed_dim
        self.conv_image_tower = model_config.image_tower == "small_cnn"
        self.vision = (
            ConvImageEncoder(model_config, image_size)
            if self.conv_image_tower
            else ViTModel(build_vit_config(model_config, image_size), add_pooling_layer=False)
        )
        self.text = BertModel(
            build_bert_config(model_config, vocab_size, model_config.text_layers), add_pooling_layer=False
        )
        start_text_embeddings_apart(self.text)
        self.vision_proj = nn.Linear(hidden, embed_dim)
        self.text_proj = nn.Linear(hidden, embed_dim)
        self.vision_independent_proj = nn.Linear(hidden, embed_dim) if with_independent_heads else None
        self.text_independent_proj = nn.Linear(hidden, embed_dim) if with_independent_heads else None
        self.mean_pooling = model_config.pooling == "mean"

    @property
    def has_independent_heads(self) -> bool:
        return self.vision_independent_proj is not None

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        if self.conv_image_tower:
            return self.vision(image)  # (B, 1 + h*w, H)
        return self.vision(pixel_values=image).last_hidden_state  # (B, P+1, H)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)

    def image_features(self, image_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        # the CNN's first token, its global max, is an image summary from the start, unlike a ViT's [CLS]
        pooled = image_embeds.mean(1) if self.mean_pooling and not self.conv_image_tower else image_embeds[:, 0]
        return self._project(pooled, self.vision_proj, self.vision_independent_proj)

    def text_features(self, text_embeds: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Projected features of the [CLS] output, or of the mean over the non-padding tokens (model.pooling)."""
        if self.mean_pooling:
            weights = attention_mask.to(text_embeds.dtype)[:, :, None]
            pooled = (text_embeds * weights).sum(1) / weights.sum(1).clamp(min=1)
        else:
            pooled = text_embeds[:, 0]
        return self._project(pooled, self.text_proj, self.text_independent_proj)

    @staticmethod
    def _project(cls_output: torch.Tensor, shared: nn.Linear, independent: nn.Linear | None) -> dict:
        features = {"shared": F.normalize(shared(cls_output), dim=-1), "pooled": cls_output}
        if independent is not None:
            features["independent"] = F.normalize(independent(cls_output), dim=-1)
        return features


class AlbefModel(nn.Module):
    """The towers, the fusion encoder and the pre-training heads (ITM, MLM)."""

    def __init__(self, model_config: AlbefModelConfig, image_size: int, vocab_size: int, with_independent_heads: bool):
        super().__init__()
        self.towers = UnimodalTowers(model_config, image_size, vocab_size, with_independent_heads)
        fusion_config = build_bert_config(model_config, vocab_size, model_config.fusion_layers)
        self.fusion = FusionEncoder(fusion_config)
        self.itm_head = nn.Linear(model_config.hidden_size, 2)
        self.mlm_head = BertOnlyMLMHead(fusion_config)
        self.mlm_head.apply(lambda module: _init_bert_weights(module, fusion_config.initializer_range))
        # BERT ties its MLM decoder to the word embeddings, and so does ALBEF's BertForMaskedLM.
        self.mlm_head.predictions.decoder.weight = self.towers.text.embeddings.word_embeddings.weight
        # the head's separate output bias would otherwise sit outside the graph, which DDP rejects
        self.mlm_head.predictions.decoder.bias = self.mlm_head.predictions.bias

    @property
    def hidden_size(self) -> int:
        return self.itm_head.in_features

    def fuse(self, text_embeds: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.fusion(text_embeds, attention_mask, image_embeds)

    def fused_summary(self, fused: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the ITM and task heads read from the fused tokens (B, T, H): the [CLS] output, or with
        model.pooling "mean" the mean over the non-padding tokens, for the same reason as the ITC features."""
        if not self.towers.mean_pooling:
            return fused[:, 0]
        weights = attention_mask.to(fused.dtype)[:, :, None]
        return (fused * weights).sum(1) / weights.sum(1).clamp(min=1)

    def itm_logits(
        self, text_embeds: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor
    ) -> torch.Tensor:
        fused = self.fuse(text_embeds, attention_mask, image_embeds)
        return self.itm_head(self.fused_summary(fused, attention_mask))  # (B, 2)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy that follows `module` by exponential moving average (ALBEF's *_m models)."""
    copied = copy.deepcopy(module)
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return copied


@torch.no_grad()
def momentum_update(model: nn.Module, model_m: nn.Module, momentum: float) -> None:
    """param_m = momentum * param_m + (1 - momentum) * param, for every parameter pair."""
    params = [p.detach() for p in model.parameters()]
    params_m = list(model_m.parameters())
    torch._foreach_mul_(params_m, momentum)
    torch._foreach_add_(params_m, params, alpha=1.0 - momentum)
