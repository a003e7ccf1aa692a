"""ALBEF's pre-training objective (ITC with momentum distillation, ITM with hard negatives, MLM)
plus the paper's latent-structure regularizers on the unimodal projected [CLS] features.

Follows salesforce/ALBEF models/model_pretrain.py: the momentum model is a copy of the whole model
(encoders, fusion layers, MLM head), whose similarities distil into ITC and whose masked-token
predictions distil into MLM. The regularizers' augmented views are the momentum encoders' projected
features (docs/regularizers.md, "Where the terms attach").
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from trainers.albef.mlm import SpecialTokens, mask_tokens
from trainers.albef.model import AlbefModel, momentum_copy, momentum_update
from trainers.albef.queue import FeatureQueue
from trainers.config import RunConfig
from trainers.family import Batch, TrainingModule
from trainers.regularizers import REGULARIZER_TERMS, LatentStructureLoss

TEMPERATURE_RANGE = (0.001, 0.5)
INITIAL_TEMPERATURE = 0.07
# Running means of the training signals the "trained" verdict reads (about the last 1 / (1 - decay) steps)
PROGRESS_DECAY = 0.9
# ITM's label prior: each positive pair comes with two hard negatives
ITM_PRIOR_ACCURACY = 2.0 / 3.0
# parameter-name prefixes of the towers (`vision` also matches vision_proj and vision_independent_proj)
IMAGE_TOWER_PREFIX = "model.towers.vision"
TEXT_TOWER_PREFIX = "model.towers.text"


class AlbefPretraining(TrainingModule):
    # ITC, ITM, MLM, then the regularizers without a contrastive term (ITC is ALBEF's own)
    loss_names = ("itc_loss", "itm_loss", "mlm_loss", *REGULARIZER_TERMS)
    metric_names = ("temperature", "logit_scale", "itm_accuracy")

    def __init__(self, cfg: RunConfig, tokens: SpecialTokens):
        super().__init__()
        model_config = cfg.model
        with_dfs = cfg.regularizers.dfs > 0
        self.model = AlbefModel(model_config, cfg.data.image_size, tokens.vocab_size, with_dfs)
        self.model_m = momentum_copy(self.model)
        self.image_queue = FeatureQueue(model_config.queue_size, model_config.embed_dim)
        self.text_queue = FeatureQueue(model_config.queue_size, model_config.embed_dim)
        self.temperature = nn.Parameter(torch.tensor(INITIAL_TEMPERATURE))
        self.regularizer = LatentStructureLoss(cfg.regularizers, contrastive=False)
        self.tokens = tokens
        self.momentum = model_config.momentum
        self.distill_alpha = model_config.distill_alpha
        self.mlm_probability = model_config.mlm_probability
        self.hard_itm_negatives = model_config.itm_negatives == "hard"
        # ALBEF ramps the distillation weight alpha from 0 over the first epoch (Pretrain.py: alpha * min(1, i /
        # len(loader))): the momentum model's similarities are noise until it has trained a while
        self.alpha_ramp_steps = steps_per_epoch(cfg)
        self.mlm_ramp_steps = model_config.mlm_ramp_steps
        # ITC's value for features that tell nothing apart: uniform over the batch and the queue
        self.itc_chance = math.log(cfg.train.batch_size + model_config.queue_size)
        self.register_buffer("optimizer_steps", torch.zeros((), dtype=torch.long))
        # running means on the device (no host sync per step): ITC, ITM accuracy, online-momentum cosine
        self.register_buffer("progress", torch.tensor([self.itc_chance, ITM_PRIOR_ACCURACY, 1.0]))

    @property
    def towers_m(self) -> nn.Module:
        """The momentum encoders and projections (the ITC targets, the queue's and the regularizers' views)."""
        return self.model_m.towers

    @property
    def alpha(self) -> torch.Tensor:
        """This step's distillation weight: distill_alpha * min(1, step / steps per epoch)."""
        return self.distill_alpha * self._ramp(self.alpha_ramp_steps)

    @property
    def mlm_weight(self) -> torch.Tensor:
        """This step's MLM weight: min(1, step / model.mlm_ramp_steps), 1 without a ramp."""
        return self._ramp(self.mlm_ramp_steps)

    def _ramp(self, steps: int) -> torch.Tensor:
        return (self.optimizer_steps.float() / max(1, steps)).clamp(max=1.0) if steps else torch.ones(())

    def training_progress(self) -> dict[str, float]:
        """Running means of the last steps: ITC (with its chance value), ITM accuracy (with its 2/3 prior), and
        the cosine between the online and momentum features, which are the regularizers' augmented views."""
        itc, itm_accuracy, momentum_cosine = self.progress.tolist()
        return {"itc_loss": itc, "itc_chance": self.itc_chance, "itm_accuracy": itm_accuracy,
                "itm_prior_accuracy": ITM_PRIOR_ACCURACY, "momentum_cosine": momentum_cosine}

    def forward(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        image, input_ids, attention_mask = batch["image"], batch["input_ids"], batch["attention_mask"]
        towers = self.model.towers
        image_embeds = towers.encode_image(image)
        text_embeds = towers.encode_text(input_ids, attention_mask)
        image_features = towers.image_features(image_embeds)
        text_features = towers.text_features(text_embeds, attention_mask)
        with torch.no_grad():
            image_embeds_m = self.towers_m.encode_image(image)
            image_features_m = self.towers_m.image_features(image_embeds_m)
            text_embeds_m = self.towers_m.encode_text(input_ids, attention_mask)
            text_features_m = self.towers_m.text_features(text_embeds_m, attention_mask)

        itc_loss, sim_i2t, sim_t2i = self._itc_loss(
            image_features["shared"],
            text_features["shared"],
            image_features_m["shared"],
            text_features_m["shared"],
        )
        self.image_queue.enqueue(image_features_m["shared"])
        self.text_queue.enqueue(text_features_m["shared"])
        itm_loss, itm_accuracy = self._itm_loss(image_embeds, text_embeds, attention_mask, sim_i2t, sim_t2i)
        losses = {
            "itc_loss": itc_loss,
            "itm_loss": itm_loss,
            "mlm_loss": self.mlm_weight * self._mlm_loss(input_ids, attention_mask, image_embeds, image_embeds_m),
        }
        losses.update(self._regularizer_losses(image_features, text_features, image_features_m, text_features_m))
        if self.training:
            self._track_progress(itc_loss, itm_accuracy, image_features, text_features, image_features_m,
                                 text_features_m)
        temperature = self.temperature.detach()  # metrics stay on the device: the loop reads them per epoch
        metrics = {"temperature": temperature, "logit_scale": 1.0 / temperature, "itm_accuracy": itm_accuracy}
        return losses, metrics

    def tower_of(self, parameter_name: str) -> Literal["image", "text"] | None:
        """The ViT and the BERT text encoder, each with its ITC (and DFS) projections; the fusion encoder,
        the ITM and MLM heads and the temperature train at train.lr."""
        if parameter_name.startswith(IMAGE_TOWER_PREFIX):
            return "image"
        if parameter_name.startswith(TEXT_TOWER_PREFIX):
            return "text"
        return None

    def after_optimizer_step(self) -> None:
        # After the step, not in forward as ALBEF does, so gradient accumulation moves the
        # momentum encoders once per optimizer step; the first forward sees identical copies either way.
        with torch.no_grad():
            self.temperature.clamp_(*TEMPERATURE_RANGE)
        momentum_update(self.model, self.model_m, self.momentum)
        self.optimizer_steps += 1

    @torch.no_grad()
    def _track_progress(self, itc_loss, itm_accuracy, image_features, text_features, image_features_m,
                        text_features_m) -> None:
        momentum_cosine = (
            (image_features["shared"] * image_features_m["shared"]).sum(1).mean()
            + (text_features["shared"] * text_features_m["shared"]).sum(1).mean()
        ) / 2
        device = self.progress.device
        itm_accuracy = torch.as_tensor(itm_accuracy, device=device).float()
        current = torch.stack([itc_loss.detach().float().to(device), itm_accuracy, momentum_cosine.float().to(device)])
        self.progress.mul_(PROGRESS_DECAY).add_(current, alpha=1.0 - PROGRESS_DECAY)

    # ------------------------------------------------------------------ ITC

    def _itc_loss(self, image_feat, text_feat, image_feat_m, text_feat_m):
        """Contrast against the batch's momentum features plus the queues, with soft targets
        alpha * softmax(momentum similarities) + (1 - alpha) * one-hot (momentum distillation)."""
        temperature = self.temperature
        with torch.no_grad():
            image_feat_all = torch.cat([image_feat_m, self.image_queue.features.clone()])  # (B+Q, D)
            text_feat_all = torch.cat([text_feat_m, self.text_queue.features.clone()])
            one_hot = torch.zeros(image_feat.shape[0], text_feat_all.shape[0], device=image_feat.device)
            one_hot.fill_diagonal_(1.0)
            targets_i2t = self._soft_targets(image_feat_m @ text_feat_all.T / temperature, one_hot)
            targets_t2i = self._soft_targets(text_feat_m @ image_feat_all.T / temperature, one_hot)
        sim_i2t = image_feat @ text_feat_all.T / temperature  # (B, B+Q)
        sim_t2i = text_feat @ image_feat_all.T / temperature
        loss_i2t = -(F.log_softmax(sim_i2t.float(), dim=1) * targets_i2t).sum(1).mean()
        loss_t2i = -(F.log_softmax(sim_t2i.float(), dim=1) * targets_t2i).sum(1).mean()
        return (loss_i2t + loss_t2i) / 2, sim_i2t, sim_t2i

    def _soft_targets(self, sim_m: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha
        return alpha * F.softmax(sim_m.float(), dim=1) + (1 - alpha) * one_hot

    # ------------------------------------------------------------------ ITM

    def _itm_loss(self, image_embeds, text_embeds, attention_mask, sim_i2t, sim_t2i):
        """Positive pairs, plus per image a negative text and per text a negative image from the other pairs in
        the batch: hard ones drawn with probability softmax(similarity), or uniformly (model.itm_negatives)."""
        batch_size = image_embeds.shape[0]
        if batch_size > 1:
            with torch.no_grad():
                negative_image = _sample_negatives(sim_t2i[:, :batch_size], self.hard_itm_negatives)  # per text
                negative_text = _sample_negatives(sim_i2t[:, :batch_size], self.hard_itm_negatives)  # per image
            image_all = torch.cat([image_embeds, image_embeds[negative_image], image_embeds])
            text_all = torch.cat([text_embeds, text_embeds, text_embeds[negative_text]])
            mask_all = torch.cat([attention_mask, attention_mask, attention_mask[negative_text]])
        else:  # a lone pair has no negative to draw
            image_all, text_all, mask_all = image_embeds, text_embeds, attention_mask
        logits = self.model.itm_logits(text_all, mask_all, image_all)  # (3B, 2)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        labels[:batch_size] = 1
        accuracy = (logits.argmax(1) == labels).float().mean()
        return F.cross_entropy(logits.float(), labels), accuracy

    # ------------------------------------------------------------------ MLM

    def _mlm_loss(self, input_ids, attention_mask, image_embeds, image_embeds_m):
        """(1 - alpha) * cross-entropy + alpha * cross-entropy against the momentum model's predicted token
        distribution, over the masked tokens (ALBEF's MLM distillation)."""
        masked_ids, labels = mask_tokens(input_ids, self.tokens, self.mlm_probability)
        text_embeds = self.model.towers.encode_text(masked_ids, attention_mask)
        logits = self.model.mlm_head(self.model.fuse(text_embeds, attention_mask, image_embeds)).float()  # (B, T, V)
        chosen = labels != -100
        # A batch where no token was drawn contributes 0 rather than 0/0.
        count = chosen.sum().clamp(min=1)
        hard = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum") / count
        with torch.no_grad():
            model_m = self.model_m
            text_embeds_m = model_m.towers.encode_text(masked_ids, attention_mask)
            soft = F.softmax(model_m.mlm_head(model_m.fuse(text_embeds_m, attention_mask, image_embeds_m)).float(), -1)
        distill = -(F.log_softmax(logits, dim=-1) * soft).sum(-1)[chosen].sum() / count
        alpha = self.alpha
        return (1 - alpha) * hard + alpha * distill

    # ------------------------------------------------------------------ regularizers

    def _regularizer_losses(self, image_features, text_features, image_features_m, text_features_m):
        # The momentum features are computed for ITC anyway, so the views cost nothing extra.
        views = {"image_aug": image_features_m["shared"], "text_aug": text_features_m["shared"]}
        if "independent" in image_features:
            views |= {
                "image_independent": image_features["independent"],
                "text_independent": text_features["independent"],
                "image_independent_aug": image_features_m["independent"],
                "text_independent_aug": text_features_m["independent"],
            }
        logit_scale = 1.0 / self.temperature
        return self.regularizer(image_features["shared"], text_features["shared"], logit_scale, **views)


def steps_per_epoch(cfg: RunConfig) -> int:
    """Optimizer steps in one epoch on one worker, from the configuration (the loader is not built here)."""
    data, train = cfg.data, cfg.train
    if data.dataset == "synthetic":
        samples = data.train_size
    elif data.dataset == "webdataset":
        from trainers.data.pretrain import known_sample_count, shard_urls

        samples = data.samples_per_epoch or known_sample_count(shard_urls(data.path)) or 0
    else:  # an annotation file: its length
        from trainers.data import build_pretrain_dataset

        samples = len(build_pretrain_dataset(data, "train"))
    per_step = train.batch_size * cfg.resources.num_workers * train.grad_accum_steps
    return max(1, samples // per_step)


def _sample_negatives(similarity: torch.Tensor, hard: bool) -> torch.Tensor:
    """One index per row, drawn from softmax(similarity) (hard) or uniformly, with the row's own pair excluded."""
    if hard:
        # nan_to_num: the loop reads finiteness back only every few steps, so a diverged step may still come here;
        # multinomial would raise on NaN weights, and the loop's own non-finite-loss stop should name the step
        weights = torch.nan_to_num(F.softmax(similarity.float(), dim=1), nan=1.0) + 1e-5
    else:
        weights = torch.ones_like(similarity, dtype=torch.float)
    weights.fill_diagonal_(0.0)
    return torch.multinomial(weights, 1).squeeze(1)
