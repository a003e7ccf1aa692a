"""ALBEF fidelity points: the distillation weight ramps over the first epoch, retrieval reranks the ITC
shortlist by ITM alone (BLIP's ITM + ITC only on request), NLVR's two images meet inside the fusion
layers, fine-tuning warms up and decays, the text-only control sees shuffled images, and a run that
has not linked images and texts is marked untrained."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.albef.family import ALBEF_FAMILY, pretraining_verdict
from trainers.albef.heads import FusedClassifier, FusedExamples, TwinFusionEncoder
from trainers.albef.model import AlbefModel
from trainers.albef.pretrain import steps_per_epoch
from trainers.albef.retrieval import rerank_scores
from trainers.config import AlbefModelConfig, RunConfig

TINY = AlbefModelConfig(text_layers=1, fusion_layers=2, hidden_size=32, num_heads=2, patch_size=8,
                         vision_layers=1, embed_dim=16, queue_size=16)


def tiny_run(**train) -> RunConfig:
    return RunConfig.model_validate({
        "model": TINY.model_dump(), "data": {"image_size": 16, "train_size": 64, "eval_size": 16},
        "train": {"batch_size": 8, **train},
    })  # fmt: skip


def test_distillation_weight_ramps_over_the_first_epoch():
    cfg = tiny_run()
    module = ALBEF_FAMILY.build_module(cfg)
    assert steps_per_epoch(cfg) == 8
    assert float(module.alpha) == 0.0
    for step in range(1, 12):
        module.after_optimizer_step()
        assert float(module.alpha) == pytest.approx(TINY.distill_alpha * min(1.0, step / 8))
    assert steps_per_epoch(tiny_run(grad_accum_steps=2)) == 4


def test_untrained_module_is_marked_untrained():
    cfg = tiny_run()
    module = ALBEF_FAMILY.build_module(cfg)
    batch = ALBEF_FAMILY.build_collate(cfg)([ALBEF_FAMILY.build_train_dataset(cfg)[i] for i in range(8)])
    module.train()
    module(batch)
    verdict = pretraining_verdict(module)
    assert verdict["albef/trained"] == 0.0
    assert verdict["albef/itc_chance"] == pytest.approx(math.log(8 + TINY.queue_size))
    assert verdict["albef/itm_prior_accuracy"] == pytest.approx(2 / 3)
    # identical copies at the start: the online and momentum features agree up to dropout
    assert verdict["albef/momentum_cosine"] > 0.9
    with torch.no_grad():  # a run whose running ITC and ITM beat their priors counts as trained
        module.progress.copy_(torch.tensor([verdict["albef/itc_chance"] - 1.0, 0.9, 0.5]))
    assert pretraining_verdict(module)["albef/trained"] == 1.0


def test_retrieval_reranks_the_itc_shortlist_by_itm_alone():
    torch.manual_seed(0)
    model = AlbefModel(TINY, image_size=16, vocab_size=30, with_independent_heads=False).eval()
    image_embeds, text_embeds = torch.randn(5, 5, 32), torch.randn(6, 4, 32)
    mask = torch.ones(6, 4, dtype=torch.long)
    similarity = torch.randn(5, 6)
    i2t, t2i = rerank_scores(model, image_embeds, text_embeds, mask, similarity, top_k=3)
    i2t_blip, _ = rerank_scores(model, image_embeds, text_embeds, mask, similarity, top_k=3, add_itc_similarity=True)
    for row in range(5):
        shortlist = similarity[row].topk(3).indices
        assert torch.isinf(i2t[row]).sum() == 6 - 3 and torch.isfinite(i2t[row, shortlist]).all()
        with torch.no_grad():
            images = image_embeds[row : row + 1].expand(3, -1, -1)
            itm = model.itm_logits(text_embeds[shortlist], mask[shortlist], images)
        torch.testing.assert_close(i2t[row, shortlist], itm[:, 1])
        torch.testing.assert_close(i2t_blip[row, shortlist], itm[:, 1] + similarity[row, shortlist])
    assert torch.isfinite(t2i).sum() == 6 * 3


def test_nlvr_images_interact_inside_the_fusion_layers():
    torch.manual_seed(0)
    model = AlbefModel(TINY, image_size=16, vocab_size=30, with_independent_heads=False).eval()
    twin = TwinFusionEncoder(model.fusion).eval()
    text, image, other = torch.randn(2, 4, 32), torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    mask = torch.ones(2, 4, dtype=torch.long)
    with torch.no_grad():
        # the merge starts as the mean of the two cross-attentions: one image twice is the pre-trained fusion
        torch.testing.assert_close(twin(text, mask, (image, image)), model.fuse(text, mask, image))
        # every text token, [CLS] included, depends on both images (not two separate passes concatenated)
        changed = twin(text, mask, (image, other))
        assert (changed - twin(text, mask, (image, image))).abs().max() > 1e-4
    classifier = FusedClassifier(model, num_classes=2, num_images=2)
    assert classifier.twin_fusion is not None and classifier.twin_fusion.layers[0].crossattention[1] is not (
        classifier.twin_fusion.layers[0].crossattention[0])


def test_text_only_control_keeps_texts_and_labels_and_moves_images():
    images = torch.arange(20, dtype=torch.uint8).reshape(20, 1, 1, 1).expand(20, 3, 2, 2).contiguous()
    examples = FusedExamples((images, images.clone()), [f"t{i}" for i in range(20)], torch.arange(20))
    shuffled = examples.with_images_shuffled(seed=3)
    assert shuffled.texts == examples.texts and torch.equal(shuffled.labels, examples.labels)
    moved = [(shuffled.images[slot][:, 0, 0, 0] != torch.arange(20)).sum() for slot in (0, 1)]
    assert all(m > 10 for m in moved)
    assert sorted(shuffled.images[0][:, 0, 0, 0].tolist()) == list(range(20))  # a permutation
    assert not torch.equal(shuffled.images[0], shuffled.images[1])  # each slot its own permutation


def _mlm_loss_with_momentum_model_perturbed(module, batch, perturb: bool) -> float:
    if perturb:
        with torch.no_grad():
            for parameter in [*module.model_m.fusion.parameters(), *module.model_m.mlm_head.parameters()]:
                parameter.add_(0.5 * torch.randn_like(parameter))
    with torch.no_grad():
        image_embeds = module.model.towers.encode_image(batch["image"])
        image_embeds_m = module.towers_m.encode_image(batch["image"])
        torch.manual_seed(1)  # the same masked tokens every call
        return float(module._mlm_loss(batch["input_ids"], batch["attention_mask"], image_embeds, image_embeds_m))


def test_mlm_distils_from_the_momentum_fusion_and_mlm_head():
    torch.manual_seed(0)
    cfg = tiny_run()
    batch = ALBEF_FAMILY.build_collate(cfg)([ALBEF_FAMILY.build_train_dataset(cfg)[i] for i in range(8)])
    module = ALBEF_FAMILY.build_module(cfg).eval()
    with torch.no_grad():  # confident online predictions: against near-uniform ones every target scores the same
        for parameter in module.model.mlm_head.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    # the momentum model holds the fusion layers and the MLM head too, and follows them by EMA
    assert {"fusion", "mlm_head", "itm_head"} <= dict(module.model_m.named_children()).keys()
    assert all(not p.requires_grad for p in module.model_m.parameters())
    # alpha is 0 at step 0: the momentum model's predictions do not enter the loss yet
    plain = _mlm_loss_with_momentum_model_perturbed(module, batch, perturb=False)
    assert _mlm_loss_with_momentum_model_perturbed(module, batch, perturb=True) == pytest.approx(plain)
    module.optimizer_steps.fill_(steps_per_epoch(cfg))  # alpha at full weight: they do
    distilled = _mlm_loss_with_momentum_model_perturbed(module, batch, perturb=False)
    assert abs(_mlm_loss_with_momentum_model_perturbed(module, batch, perturb=True) - distilled) > 1e-3


def test_mean_pooling_ignores_padding_and_cls_pooling_reads_the_first_token():
    torch.manual_seed(0)
    mean_model = AlbefModel(TINY.model_copy(update={"pooling": "mean"}), 16, 30, with_independent_heads=False)
    cls_model = AlbefModel(TINY, 16, 30, with_independent_heads=False)
    text = torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    padded_changed = text.clone()
    padded_changed[0, 3:] += 5.0
    mean_features = mean_model.towers.text_features(text, mask)["pooled"]
    torch.testing.assert_close(mean_features, mean_model.towers.text_features(padded_changed, mask)["pooled"])
    torch.testing.assert_close(mean_features[0], text[0, :3].mean(0))
    torch.testing.assert_close(cls_model.towers.text_features(text, mask)["pooled"], text[:, 0])
    image = torch.randn(2, 5, 32)
    torch.testing.assert_close(mean_model.towers.image_features(image)["pooled"], image.mean(1))
