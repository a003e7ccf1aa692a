"""Unit tests of ALBEF's building blocks: fusion attention, momentum update, feature queue, masking."""

from __future__ import annotations

import pytest
import torch

from trainers.albef.model import AlbefModel, FusionEncoder, build_bert_config, momentum_copy, momentum_update
from trainers.albef.queue import FeatureQueue
from trainers.config import AlbefModelConfig

TINY = AlbefModelConfig(
    text_layers=2,
    fusion_layers=2,
    hidden_size=64,
    num_heads=4,
    patch_size=8,
    vision_layers=1,
    embed_dim=16,
    queue_size=32,
)


def test_fusion_self_attention_is_bidirectional():
    torch.manual_seed(0)
    fusion = FusionEncoder(build_bert_config(TINY, vocab_size=50, num_layers=2)).eval()
    text = torch.randn(1, 6, 64)
    image = torch.randn(1, 5, 64)
    mask = torch.ones(1, 6)
    changed = text.clone()
    changed[0, 4] += 1.0  # a later token
    with torch.no_grad():
        before, after = fusion(text, mask, image), fusion(changed, mask, image)
    # an earlier token's output moves: a causal mask would leave positions 0..3 untouched
    assert (before[0, 0] - after[0, 0]).abs().max() > 1e-4
    assert (before[0, 3] - after[0, 3]).abs().max() > 1e-4


def test_fusion_ignores_padded_text_tokens_and_attends_to_the_image():
    torch.manual_seed(0)
    fusion = FusionEncoder(build_bert_config(TINY, vocab_size=50, num_layers=2)).eval()
    text, image = torch.randn(1, 6, 64), torch.randn(1, 5, 64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    changed_pad = text.clone()
    changed_pad[0, 5] += 3.0
    other_image = image + 1.0
    with torch.no_grad():
        base = fusion(text, mask, image)
        torch.testing.assert_close(base[0, :4], fusion(changed_pad, mask, image)[0, :4])
        assert (base[0, 0] - fusion(text, mask, other_image)[0, 0]).abs().max() > 1e-4


def test_momentum_update_is_an_exponential_moving_average():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model_m = momentum_copy(model)
    assert all(not p.requires_grad for p in model_m.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    expected = [0.9 * pm + 0.1 * p for p, pm in zip(model.parameters(), model_m.parameters(), strict=True)]
    momentum_update(model, model_m, 0.9)
    for got, want in zip(model_m.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_albef_model_momentum_copy_tracks_the_towers():
    model = AlbefModel(TINY, image_size=16, vocab_size=40, with_independent_heads=True)
    towers_m = momentum_copy(model.towers)
    with torch.no_grad():
        model.towers.vision_proj.weight.add_(1.0)
    old = towers_m.vision_proj.weight.clone()
    momentum_update(model.towers, towers_m, 0.995)
    torch.testing.assert_close(towers_m.vision_proj.weight, 0.995 * old + 0.005 * model.towers.vision_proj.weight)


def test_mlm_decoder_is_tied_to_the_word_embeddings():
    model = AlbefModel(TINY, image_size=16, vocab_size=40, with_independent_heads=False)
    assert model.mlm_head.predictions.decoder.weight is model.towers.text.embeddings.word_embeddings.weight
    assert model.towers.vision_independent_proj is None


def test_queue_is_fifo_and_wraps_around():
    queue = FeatureQueue(size=5, dim=2)
    assert queue.features.shape == (5, 2)
    torch.testing.assert_close(queue.features.norm(dim=1), torch.ones(5))
    first = torch.arange(6.0).reshape(3, 2)
    queue.enqueue(first)
    torch.testing.assert_close(queue.features[:3], first)
    assert int(queue.pointer) == 3
    second = 10 + torch.arange(6.0).reshape(3, 2)
    queue.enqueue(second)  # two rows fill slots 3, 4; the third overwrites the oldest slot 0
    torch.testing.assert_close(queue.features[3:], second[:2])
    torch.testing.assert_close(queue.features[0], second[2])
    torch.testing.assert_close(queue.features[1:3], first[1:])
    assert int(queue.pointer) == 1


def test_queue_keeps_newest_rows_of_an_oversized_batch():
    queue = FeatureQueue(size=3, dim=1)
    queue.enqueue(torch.arange(7.0)[:, None])
    assert sorted(queue.features.flatten().tolist()) == [4.0, 5.0, 6.0]
    assert queue.size == 3 and int(queue.pointer) == 1


@pytest.mark.parametrize("probability", [0.0, 0.5, 1.0])
def test_mask_tokens_follows_bert_rules(probability):
    from trainers.albef.mlm import SpecialTokens, mask_tokens

    tokens = SpecialTokens(pad_id=0, cls_id=1, mask_id=2, vocab_size=30)
    ids = torch.randint(3, 30, (64, 20))
    ids[:, 0] = 1
    ids[:, 15:] = 0
    masked, labels = mask_tokens(ids, tokens, probability, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, 15:].any()
    torch.testing.assert_close(labels[chosen], ids[chosen])
    assert (masked[~chosen] == ids[~chosen]).all()
    fraction = chosen[:, 1:15].float().mean().item()
    assert abs(fraction - probability) < 0.05
    if probability == 1.0:
        share_masked = (masked[chosen] == 2).float().mean().item()
        assert 0.75 < share_masked < 0.85


def test_hard_negatives_are_drawn_even_from_a_diverged_similarity():
    """Finiteness is read back only every few steps, so a NaN similarity may reach the sampler: it must
    still draw another pair's index (the loop then stops on the non-finite loss and names the step)."""
    from trainers.albef.pretrain import _sample_negatives

    for similarity in (torch.full((6, 6), float("nan")), torch.randn(6, 6)):
        drawn = _sample_negatives(similarity, hard=True)
        assert drawn.shape == (6,) and (drawn != torch.arange(6)).all()


def test_hard_negatives_follow_the_similarity_and_random_ones_do_not():
    from trainers.albef.pretrain import _sample_negatives

    torch.manual_seed(0)
    similarity = torch.zeros(4, 4)
    similarity[:, 3] = 20.0  # pair 3's text is by far the most similar to every other image
    similarity[3, 2] = 20.0
    hard = torch.stack([_sample_negatives(similarity, hard=True) for _ in range(200)])
    uniform = torch.stack([_sample_negatives(similarity, hard=False) for _ in range(200)])
    assert (hard[:, :3] == 3).float().mean() > 0.99 and (hard[:, 3] == 2).float().mean() > 0.99
    assert (uniform != torch.arange(4)).all()
    assert 0.2 < (uniform[:, :3] == 3).float().mean() < 0.5  # one in three


def test_head_margin_and_its_standard_error_are_paired_per_example():
    from trainers.albef.family import head_metrics

    with_images = torch.tensor([True, True, True, False, True, True, False, True])
    text_only = torch.tensor([True, False, True, False, False, True, True, False])
    metrics = head_metrics({"accuracy": with_images, "text_only_accuracy": text_only})
    assert metrics["accuracy"] == pytest.approx(0.75) and metrics["text_only_accuracy"] == pytest.approx(0.5)
    assert metrics["image_margin"] == pytest.approx(0.25)
    difference = torch.tensor([0.0, 1, 0, 0, 1, 0, -1, 1])
    assert metrics["image_margin_se"] == pytest.approx(float(difference.std()) / 8**0.5)
    # one control alone (no validation head for it): its accuracy only
    assert head_metrics({"accuracy": with_images}) == {"accuracy": pytest.approx(0.75)}
