"""The CLIP family's module on the shipped small towers: projections moved out, DFS heads beside them."""

from __future__ import annotations

import open_clip
import pytest
import torch

from trainers.clip import ClipTrainingModule
from trainers.config import build_run_config


def module_for(arch: str, **regularizers) -> ClipTrainingModule:
    torch.manual_seed(0)
    tree = {"model": {"family": "clip", "arch": arch}, "regularizers": regularizers}
    return ClipTrainingModule(build_run_config(tree))


@pytest.mark.parametrize("arch", ["tiny-vit", "tiny-cnn", "tiny-rn"])
def test_shared_embedding_is_the_open_clip_models_own(arch):
    """Taking the projection out of the tower must not change what the model computes."""
    module = module_for(arch, dfs=0.5).eval()
    torch.manual_seed(0)  # the same seed as module_for: open_clip builds identical weights
    reference = open_clip.create_model(arch).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        features = module.encode_images(images)
        expected = torch.nn.functional.normalize(reference.encode_image(images), dim=-1)
    torch.testing.assert_close(features["shared"], expected)
    # DFS heads read the same pooled output as the shared projection, not the embedding
    pooled = torch.nn.functional.normalize(features["pooled"], dim=-1)
    assert pooled.shape != features["shared"].shape or not torch.allclose(pooled, features["shared"])
    assert features["pooled"].shape[1] == module.image_independent.in_features
    assert features["independent"].shape == features["shared"].shape


def test_tiny_cnn_trains_a_step_with_every_regularizer():
    module = module_for("tiny-cnn", gc=0.5, bb=0.5, dfs=0.5, align=1.0, inmodal=True).train()
    tokens = open_clip.get_tokenizer("tiny-cnn")(["a red circle"] * 4 + ["a blue square"] * 4)
    batch = {"image": torch.randn(8, 3, 64, 64), "text": tokens,
             "image_aug": torch.randn(8, 3, 64, 64), "text_aug": tokens}
    before = [p.detach().clone() for p in module.model.visual.parameters()]
    losses, _ = module(batch)
    assert {"contrastive_loss", "gc_loss", "bb_loss", "dfs_loss", "align_loss", "inmodal_loss"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    torch.optim.SGD(module.parameters(), lr=0.1).step()
    assert any(not torch.equal(b, p) for b, p in zip(before, module.model.visual.parameters(), strict=True))


def test_dfs_image_head_carries_information_the_shared_embedding_lacks_on_a_resnet():
    """Directions of the pooled representation that the shared projection discards still move the
    DFS head u: u is not a function of v. On a ResNet this needs the attention pool's c_proj split
    off as the shared projection; with c_proj inside the tower, "pooled" was the embedding itself
    and u = normalize(W v) could hold nothing v lacks."""
    module = module_for("tiny-rn", dfs=0.5).eval()
    with torch.no_grad():
        pooled = module.encode_images(torch.randn(4, 3, 64, 64))["pooled"]  # 512 wide; the embedding is 64
        projection = torch.func.jacrev(lambda p: module.image_projection(p))(pooled[0])  # (D, C)
        _, singular_values, right = torch.linalg.svd(projection)
        null_space = right[(singular_values > 1e-6).sum():]  # pooled directions the projection discards
        assert len(null_space) > 0, "the shared projection keeps every direction of the pooled output"
        moved = pooled + 3 * pooled.norm(dim=1, keepdim=True) * null_space[0]

        def shared(p):
            return torch.nn.functional.normalize(module.image_projection(p), dim=-1)

        def independent(p):
            return torch.nn.functional.normalize(module.image_independent(p), dim=-1)

        torch.testing.assert_close(shared(moved), shared(pooled), atol=1e-4, rtol=1e-4)
        assert (independent(moved) - independent(pooled)).norm(dim=1).min() > 0.1


@pytest.mark.parametrize("arch", ["tiny-vit", "tiny-cnn", "tiny-rn"])
def test_each_tower_trains_at_its_own_rate(arch):
    """Every parameter but the logit scale belongs to a tower, and AdamW gives it that tower's rate."""
    from trainers.loop import build_optimizer

    tree = {"model": {"family": "clip", "arch": arch}, "regularizers": {"dfs": 0.5},
            "train": {"lr": 1e-3, "image_tower_lr_scale": 20.0, "text_tower_lr_scale": 0.5}}
    cfg = build_run_config(tree)
    module = ClipTrainingModule(cfg)
    rate_of = {id(param): group["lr"] for group in build_optimizer(module, cfg.train).param_groups
               for param in group["params"]}
    for name, param in module.named_parameters():
        expected = {"image": 2e-2, "text": 5e-4, None: 1e-3}[module.tower_of(name)]
        assert rate_of[id(param)] == pytest.approx(expected), name
    towers = {name: module.tower_of(name) for name, _ in module.named_parameters()}
    assert [name for name, tower in towers.items() if tower is None] == ["model.logit_scale"]
    assert all(towers[name] == "image" for name in towers if name.startswith("model.visual."))
    assert towers["model.token_embedding.weight"] == "text"


def test_albef_towers_train_at_their_own_rates():
    """ALBEF's ViT and BERT encoders (with their projections) get the tower rates; fusion and heads train.lr."""
    from trainers.family import get_family
    from trainers.loop import build_optimizer

    cfg = build_run_config({"model": {"family": "albef", "hidden_size": 32, "num_heads": 2, "patch_size": 8},
                            "data": {"image_size": 32},
                            "train": {"lr": 1e-3, "image_tower_lr_scale": 20.0, "text_tower_lr_scale": 0.5}})
    module = get_family("albef").build_module(cfg)
    rate_of = {id(param): group["lr"] for group in build_optimizer(module, cfg.train).param_groups
               for param in group["params"]}
    trained = {name: param for name, param in module.named_parameters() if param.requires_grad}
    for name, param in trained.items():
        expected = {"image": 2e-2, "text": 5e-4, None: 1e-3}[module.tower_of(name)]
        assert rate_of[id(param)] == pytest.approx(expected), name
    assert module.tower_of("model.towers.vision_proj.weight") == "image"
    assert module.tower_of("model.towers.text.embeddings.word_embeddings.weight") == "text"  # also the MLM decoder
    untowered = {name.split(".")[1] for name in trained if module.tower_of(name) is None and "." in name}
    assert untowered == {"fusion", "itm_head", "mlm_head"}
