"""BERT's masked-language-model input corruption, as ALBEF applies it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpecialTokens:
    pad_id: int
    cls_id: int
    mask_id: int
    vocab_size: int


def mask_tokens(
    input_ids: torch.Tensor,
    tokens: SpecialTokens,
    probability: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: each non-pad, non-[CLS] token is chosen with `probability`; of those 80% become
    [MASK], 10% a random token, 10% stay. Returns (masked ids, labels with -100 where not chosen)."""
    device = input_ids.device
    chosen = torch.rand(input_ids.shape, generator=generator, device=device) < probability
    chosen &= (input_ids != tokens.pad_id) & (input_ids != tokens.cls_id)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    draw = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = chosen & (draw < 0.8)
    to_random = chosen & (draw >= 0.8) & (draw < 0.9)
    random_ids = torch.randint(tokens.vocab_size, input_ids.shape, generator=generator, device=device)
    masked = torch.where(to_mask, torch.full_like(input_ids, tokens.mask_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels
