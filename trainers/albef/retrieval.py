"""ALBEF's retrieval procedure: an ITC similarity shortlist of the top k candidates per query,
re-ranked by the ITM head's match logit (ALBEF's Retrieval.py evaluation). BLIP ranks the shortlist by
ITM logit + ITC similarity instead; `add_itc_similarity=True` gives that variant."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trainers.albef.model import AlbefModel

RERANK_TOP_K = 16


@torch.no_grad()
def rerank_scores(
    model: AlbefModel,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    similarity: torch.Tensor,
    top_k: int = RERANK_TOP_K,
    add_itc_similarity: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t [N_img, N_txt], t2i [N_txt, N_img]) scores: the shortlisted pairs get their ITM match logit
    (plus their ITC similarity when `add_itc_similarity`, BLIP's ranking), the rest -inf.

    image_embeds (N_img, P+1, H) and text_embeds (N_txt, T, H) are the unimodal encoder outputs,
    similarity (N_img, N_txt) their ITC similarities.
    """
    i2t = torch.full_like(similarity, -torch.inf)
    for row in range(similarity.shape[0]):
        values, candidates = similarity[row].topk(min(top_k, similarity.shape[1]))
        images = image_embeds[row : row + 1].expand(len(candidates), -1, -1)
        itm = model.itm_logits(text_embeds[candidates], attention_mask[candidates], images)[:, 1]
        i2t[row, candidates] = itm.float() + (values if add_itc_similarity else 0.0)
    t2i = torch.full_like(similarity.T, -torch.inf)
    for column in range(similarity.shape[1]):
        values, candidates = similarity[:, column].topk(min(top_k, similarity.shape[0]))
        texts = text_embeds[column : column + 1].expand(len(candidates), -1, -1)
        masks = attention_mask[column : column + 1].expand(len(candidates), -1)
        itm = model.itm_logits(texts, masks, image_embeds[candidates])[:, 1]
        t2i[column, candidates] = itm.float() + (values if add_itc_similarity else 0.0)
    return i2t, t2i


def recall_at_k(
    i2t: torch.Tensor, t2i: torch.Tensor, caption_to_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """{"i2t_r1", ..., "t2i_r10", "mean_recall"} from score matrices; an image hits when any of its
    captions is in its top k, a caption when its own image is (the project's retrieval metric)."""
    caption_to_image = caption_to_image.to(i2t.device)
    image_ids = torch.arange(i2t.shape[0], device=i2t.device)
    has_caption = torch.zeros(i2t.shape[0], dtype=torch.bool, device=i2t.device)
    has_caption[caption_to_image] = True
    recalls: dict[str, float] = {}
    for k in ks:
        top_texts = i2t.topk(min(k, i2t.shape[1]), dim=1).indices  # (N_img, k)
        i2t_hit = (caption_to_image[top_texts] == image_ids[:, None]).any(dim=1)
        recalls[f"i2t_r{k}"] = float(i2t_hit[has_caption].float().mean())
        top_images = t2i.topk(min(k, t2i.shape[1]), dim=1).indices  # (N_txt, k)
        recalls[f"t2i_r{k}"] = float((top_images == caption_to_image[:, None]).any(dim=1).float().mean())
    recalls["mean_recall"] = sum(recalls.values()) / len(recalls)
    return recalls
