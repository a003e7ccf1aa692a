"""Model inputs for ALBEF: normalized images and WordPiece-tokenized text, and the training collate."""

from __future__ import annotations

from typing import Any

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torchvision.transforms import v2

from trainers.albef.mlm import SpecialTokens
from trainers.albef.model import MAX_TEXT_LENGTH
from trainers.config import DataConfig
from trainers.family import Batch


class AlbefInputs:
    """uint8 images -> normalized float images (ALBEF normalizes with CLIP's statistics);
    captions -> (input_ids, attention_mask) with [CLS] ... [SEP], padded to the longest, at most 32."""

    def __init__(self, data_config: DataConfig):
        from trainers.data import build_wordpiece_tokenizer

        self.tokenizer = build_wordpiece_tokenizer(data_config)
        self.normalize = v2.Compose(
            [
                v2.Resize((data_config.image_size, data_config.image_size), antialias=True),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD),
            ]
        )

    @property
    def special_tokens(self) -> SpecialTokens:
        tokenizer = self.tokenizer
        return SpecialTokens(
            pad_id=tokenizer.pad_token_id,
            cls_id=tokenizer.cls_token_id,
            mask_id=tokenizer.mask_token_id,
            vocab_size=len(tokenizer),
        )

    def images(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(images)

    def texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=MAX_TEXT_LENGTH, return_tensors="pt"
        )
        return encoded["input_ids"], encoded["attention_mask"]

    def collate(self, items: list[dict[str, Any]]) -> Batch:
        input_ids, attention_mask = self.texts([item["caption"] for item in items])
        images = torch.stack([item["image"] for item in items])  # (B, 3, H, W) uint8
        return {"image": self.images(images), "input_ids": input_ids, "attention_mask": attention_mask}
