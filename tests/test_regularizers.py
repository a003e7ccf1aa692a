"""The regularizers against naive double-loop transcriptions of docs/regularizers.md, and the loss module."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from trainers.config import RegularizerConfig
from trainers.family import total_loss
from trainers.regularizers import (
    LatentStructureLoss,
    alignment_pressure_loss,
    brownian_bridge_loss,
    feature_separation_loss,
    geometric_consistency_loss,
    sample_bridge_times,
)


def unit(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=generator, dtype=torch.float64), dim=1).to(dtype)


# --------------------------------------------------------------------------- naive references


def dot(x, y) -> float:
    return float(sum(a * b for a, b in zip(x.tolist(), y.tolist(), strict=True)))


def reference_gc(v, t, v_aug=None, t_aug=None, normalization="paper") -> float:
    """paper: (1/N) sum_j sum_k [...] + (1/N) sum_j [...]; per_pair: the double sums over N^2 instead."""
    n = len(v)
    pairs, diagonal = 0.0, 0.0
    for j in range(n):
        for k in range(n):
            pairs += (dot(v[j], t[k]) - dot(v[k], t[j])) ** 2 + (dot(v[j], v[k]) - dot(t[j], t[k])) ** 2
            if v_aug is not None:
                pairs += (dot(v[j], v[k]) - dot(v_aug[j], v_aug[k])) ** 2
                pairs += (dot(t[j], t[k]) - dot(t_aug[j], t_aug[k])) ** 2
        if v_aug is not None:
            diagonal += (dot(v[j], t[j]) - dot(v_aug[j], t_aug[j])) ** 2
    return pairs / (n if normalization == "paper" else n * n) + diagonal / n


def reference_bb(v, t, v_aug, s) -> float:
    n = len(v)
    total = 0.0
    for j in range(n):
        s_j = float(s[j]) if isinstance(s, torch.Tensor) else s
        point = [s_j * a + (1 - s_j) * b for a, b in zip(v[j].tolist(), t[j].tolist(), strict=True)]
        norm = math.sqrt(sum(p * p for p in point))
        total += sum((a - p / norm) ** 2 for a, p in zip(v_aug[j].tolist(), point, strict=True))
    return total / n


def reference_info_nce(x, y, tau) -> float:
    n = len(x)
    total = 0.0
    for j in range(n):
        denominator = sum(math.exp(dot(x[j], y[k]) / tau) for k in range(n))
        total -= math.log(math.exp(dot(x[j], y[j]) / tau) / denominator)
    return total / n


def reference_uniformity(x) -> float:
    n = len(x)
    total = 0.0
    for j in range(n):
        for k in range(n):
            total += math.exp(-2 * sum((a - b) ** 2 for a, b in zip(x[j].tolist(), x[k].tolist(), strict=True)))
    return math.log(total / n**2)


def reference_dfs(v, t, u, w, u_aug=None, w_aug=None, tau=0.07, separation=True) -> float:
    n = len(v)
    ortho = sum(dot(v[j], u[j]) ** 2 + dot(t[j], w[j]) ** 2 for j in range(n)) / n
    total = (ortho if separation else 0.0) + reference_uniformity(u) + reference_uniformity(w)
    if u_aug is not None:
        total += reference_info_nce(u, u_aug, tau) + reference_info_nce(w, w_aug, tau)
    return total


# --------------------------------------------------------------------------- exactness


# N < D and N > D exercise both the N x N and the D x D Gram evaluations
SHAPES = [(1, 4), (5, 8), (12, 3)]


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_geometric_consistency_matches_definition(n, d):
    v, t, va, ta = (unit(n, d, seed) for seed in range(4))
    torch.testing.assert_close(geometric_consistency_loss(v, t).item(), reference_gc(v, t), rtol=1e-12, atol=1e-12)
    got = geometric_consistency_loss(v, t, va, ta).item()
    torch.testing.assert_close(got, reference_gc(v, t, va, ta), rtol=1e-12, atol=1e-12)
    for views in ((), (va, ta)):
        got = geometric_consistency_loss(v, t, *views, normalization="per_pair").item()
        expected = reference_gc(v, t, *views, normalization="per_pair")
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_per_pair_gc_does_not_grow_with_the_batch_while_the_papers_does():
    # random unit features: each pair term has the same expectation, so paper ~ N and per_pair ~ constant
    values = {n: [geometric_consistency_loss(unit(n, 16, 0), unit(n, 16, 1), normalization=normalization).item()
                  for normalization in ("paper", "per_pair")] for n in (32, 512)}
    assert values[512][0] / values[32][0] == pytest.approx(16, rel=0.15)
    assert values[512][1] / values[32][1] == pytest.approx(1, rel=0.15)
    assert values[512][1] == pytest.approx(values[512][0] / 512)


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_brownian_bridge_matches_definition(n, d):
    v, t, va = (unit(n, d, seed) for seed in range(3))
    torch.testing.assert_close(brownian_bridge_loss(v, t, va).item(), reference_bb(v, t, va, 0.25), rtol=1e-12, atol=0)
    s = sample_bridge_times(n, 0.1, 0.9, generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(brownian_bridge_loss(v, t, va, s).item(), reference_bb(v, t, va, s), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_feature_separation_matches_definition(n, d):
    v, t, u, w, ua, wa = (unit(n, d, seed) for seed in range(6))
    torch.testing.assert_close(
        feature_separation_loss(v, t, u, w).item(), reference_dfs(v, t, u, w), rtol=1e-12, atol=1e-12
    )
    got = feature_separation_loss(v, t, u, w, ua, wa, temperature=0.5).item()
    torch.testing.assert_close(got, reference_dfs(v, t, u, w, ua, wa, 0.5), rtol=1e-12, atol=1e-12)
    got = feature_separation_loss(v, t, u, w, ua, wa, temperature=0.5, separation=False).item()
    expected = reference_dfs(v, t, u, w, ua, wa, 0.5, separation=False)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_alignment_pressure_matches_definition():
    v, t = unit(6, 4, 0), unit(6, 4, 1)
    expected = sum(1 - dot(v[j], t[j]) for j in range(6)) / 6
    torch.testing.assert_close(alignment_pressure_loss(v, t).item(), expected, rtol=1e-12, atol=1e-12)


def test_small_cases_by_hand():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # N = 1: only j = k = 1; <v,t> = 0 both ways, (1 - 1)^2 = 0 for the intra term
    assert geometric_consistency_loss(e1, e2).item() == 0.0
    # two pairs: v = (e1, e2), t = (e1, e1): cross (0-1)^2 twice; intra: (0 - 1)^2 twice -> 4 / 2
    v, t = torch.cat([e1, e2]), torch.cat([e1, e1])
    assert geometric_consistency_loss(v, t).item() == pytest.approx(2.0)
    # bridge between e1 and e2 at s = 1/2 is (e1 + e2)/sqrt(2); v_aug = e1 is 2 - sqrt(2) away squared
    assert brownian_bridge_loss(e1, e2, e1, s=0.5).item() == pytest.approx(2 - math.sqrt(2))
    # one sample: uniformity log(exp(0)) = 0, InfoNCE over one candidate = 0, ortho <e1,e1>^2 = 1
    assert feature_separation_loss(e1, e2, e1, e1, e2, e2).item() == pytest.approx(1.0)
    assert alignment_pressure_loss(e1, e2).item() == pytest.approx(1.0)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize(("n", "d"), [(6, 8), (9, 4)])
def test_gc_vanishes_when_modalities_coincide(n, d):
    v = unit(n, d, 0)
    assert geometric_consistency_loss(v, v.clone(), v.clone(), v.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert geometric_consistency_loss(v, unit(n, d, 1)).item() > 0.01


def test_bb_vanishes_at_the_bridge_mean():
    v, t = unit(7, 5, 0), unit(7, 5, 1)
    s = torch.linspace(0.1, 0.9, 7, dtype=torch.float64)
    mean = F.normalize(s[:, None] * v + (1 - s[:, None]) * t, dim=1)
    assert brownian_bridge_loss(v, t, mean, s).item() == pytest.approx(0.0, abs=1e-14)
    assert brownian_bridge_loss(v, t, mean, 0.5).item() > 1e-3


def test_dfs_orthogonality_term_vanishes_for_orthogonal_features():
    basis = torch.eye(4, dtype=torch.float64)
    v, t, u, w = basis[[0, 1]], basis[[1, 0]], basis[[2, 3]], basis[[3, 2]]
    uniformity_only = reference_uniformity(u) + reference_uniformity(w)
    assert feature_separation_loss(v, t, u, w).item() == pytest.approx(uniformity_only, abs=1e-12)
    # aligned instead of orthogonal: the ortho term adds (1 + 1) per sample
    assert feature_separation_loss(u, w, u, w).item() == pytest.approx(uniformity_only + 2, abs=1e-12)


@pytest.mark.parametrize(("n", "d"), [(6, 8), (9, 4)])
def test_every_term_is_invariant_to_permuting_the_batch(n, d):
    x = [unit(n, d, seed) for seed in range(6)]
    p = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    y = [a[p] for a in x]
    s = torch.linspace(0.2, 0.8, n, dtype=torch.float64)
    pairs = [
        (geometric_consistency_loss(*x[:4]), geometric_consistency_loss(*y[:4])),
        (brownian_bridge_loss(*x[:3], s), brownian_bridge_loss(*y[:3], s[p])),
        (feature_separation_loss(*x), feature_separation_loss(*y)),
        (alignment_pressure_loss(*x[:2]), alignment_pressure_loss(*y[:2])),
    ]
    for original, permuted in pairs:
        torch.testing.assert_close(original, permuted, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("n", "d"), [(3, 4), (5, 2)])
def test_gradients_pass_gradcheck(n, d):
    x = [unit(n, d, seed).requires_grad_() for seed in range(6)]
    s = torch.linspace(0.2, 0.8, n, dtype=torch.float64)
    for fn, inputs in [
        (geometric_consistency_loss, x[:4]),
        (lambda a, b, c: brownian_bridge_loss(a, b, c, s), x[:3]),
        (lambda *a: feature_separation_loss(*a, temperature=0.3), x),
        (alignment_pressure_loss, x[:2]),
    ]:
        assert torch.autograd.gradcheck(fn, tuple(inputs), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "d"), [(16, 32), (48, 8)])
def test_half_precision_inputs_give_finite_float32_results(dtype, n, d):
    x = [unit(n, d, seed, dtype) for seed in range(6)]
    results = [
        geometric_consistency_loss(*x[:4]),
        brownian_bridge_loss(*x[:3]),
        feature_separation_loss(*x),
        alignment_pressure_loss(*x[:2]),
    ]
    exact = [geometric_consistency_loss(*(a.double() for a in x[:4]))]
    for result in results:
        assert result.dtype == torch.float32 and torch.isfinite(result)
    torch.testing.assert_close(results[0].double(), exact[0], rtol=0.05, atol=0.05)


def test_regularizers_run_in_float32_under_autocast():
    x = [unit(64, 16, seed, torch.float32) for seed in range(6)]
    eager = [geometric_consistency_loss(*x[:4]), feature_separation_loss(*x)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = [geometric_consistency_loss(*x[:4]), feature_separation_loss(*x)]
    for a, b in zip(eager, autocast, strict=True):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b)  # bf16 matmuls would be off by ~1e-2


def test_n_equals_one_works_with_gradients():
    x = [unit(1, 4, seed, torch.float32).requires_grad_() for seed in range(6)]
    loss = (
        geometric_consistency_loss(*x[:4]) + brownian_bridge_loss(*x[:3]) + feature_separation_loss(*x)
    )
    loss.backward()
    assert all(torch.isfinite(a.grad).all() for a in x)


# --------------------------------------------------------------------------- bad input


def test_mismatched_shape_names_the_argument():
    v, t = unit(4, 16, 0), unit(4, 16, 1)
    with pytest.raises(ValueError, match=r"geometric_consistency_loss: v_aug has shape \(4, 8\), expected \(4, 16\)"):
        geometric_consistency_loss(v, t, unit(4, 8, 2), t)
    with pytest.raises(ValueError, match=r"feature_separation_loss: w has shape \(3, 16\)"):
        feature_separation_loss(v, t, v, unit(3, 16, 2))


def test_non_2d_and_non_finite_and_bad_options_raise():
    v, t = unit(4, 16, 0), unit(4, 16, 1)
    with pytest.raises(ValueError, match=r"brownian_bridge_loss: v must be 2-D"):
        brownian_bridge_loss(v[0], t[0], v[0])
    bad = t.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"alignment_pressure_loss: t has non-finite values"):
        alignment_pressure_loss(v, bad)
    bad[2, 3] = float("inf")
    with pytest.raises(ValueError, match=r"brownian_bridge_loss: v_aug has non-finite values"):
        brownian_bridge_loss(v, t, bad)
    with pytest.raises(ValueError, match=r"brownian_bridge_loss: s has shape \(3,\)"):
        brownian_bridge_loss(v, t, v, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"brownian_bridge_loss: s=1.5 must lie in \(0, 1\)"):
        brownian_bridge_loss(v, t, v, 1.5)
    with pytest.raises(ValueError, match=r"feature_separation_loss: temperature=0.0 must be > 0"):
        feature_separation_loss(v, t, v, t, temperature=0.0)
    with pytest.raises(ValueError, match=r"sample_bridge_times: need 0 < low < high < 1"):
        sample_bridge_times(4, 0.5, 0.2)
    with pytest.raises(ValueError, match=r"geometric_consistency_loss: t must be a floating-point tensor"):
        geometric_consistency_loss(v, torch.ones(4, 16, dtype=torch.long))


def test_sample_bridge_times_range_and_reproducibility():
    s = sample_bridge_times(1000, 0.2, 0.4, generator=torch.Generator().manual_seed(1))
    assert s.shape == (1000,) and s.min() >= 0.2 and s.max() <= 0.4 and s.std() > 0.03
    again = sample_bridge_times(1000, 0.2, 0.4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s, again)


# --------------------------------------------------------------------------- the module


def features(n=8, d=6, seed=0) -> dict[str, torch.Tensor]:
    names = ["image_aug", "text_aug", "image_independent", "text_independent", "image_independent_aug",
             "text_independent_aug"]
    return {name: unit(n, d, seed + 2 + i) for i, name in enumerate(names)}


def test_module_terms_are_weighted_and_sum_to_the_objective():
    config = RegularizerConfig(gc=0.5, bb=2.0, dfs=0.3, align=1.5, bb_s=0.4)
    v, t, extra = unit(8, 6, 0), unit(8, 6, 1), features()
    scale = torch.tensor(10.0, dtype=torch.float64)
    losses = LatentStructureLoss(config)(v, t, scale, **extra)
    assert set(losses) == {"contrastive_loss", "align_loss", "gc_loss", "bb_loss", "dfs_loss"}
    expected = {
        "contrastive_loss": ClipLoss()(v, t, scale),
        "align_loss": 1.5 * alignment_pressure_loss(v, t),
        "gc_loss": 0.5 * geometric_consistency_loss(v, t, extra["image_aug"], extra["text_aug"]),
        "bb_loss": 2.0 * brownian_bridge_loss(v, t, extra["image_aug"], 0.4),
        "dfs_loss": 0.3 * feature_separation_loss(
            v, t, extra["image_independent"], extra["text_independent"], extra["image_independent_aug"],
            extra["text_independent_aug"], temperature=0.1,
        ),
    }
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value, rtol=1e-12, atol=1e-12, msg=key)
    torch.testing.assert_close(total_loss(losses), sum(expected.values()), rtol=1e-12, atol=1e-12)


def test_module_passes_the_gc_normalization_and_dfs_separation_options():
    v, t, extra = unit(8, 6, 0), unit(8, 6, 1), features()
    scale = torch.tensor(10.0, dtype=torch.float64)
    config = RegularizerConfig(gc=0.5, dfs=0.3, gc_normalization="per_pair", dfs_separation=False)
    losses = LatentStructureLoss(config)(v, t, scale, **extra)
    gc = geometric_consistency_loss(v, t, extra["image_aug"], extra["text_aug"], normalization="per_pair")
    dfs = feature_separation_loss(
        v, t, extra["image_independent"], extra["text_independent"], extra["image_independent_aug"],
        extra["text_independent_aug"], temperature=0.1, separation=False,
    )
    torch.testing.assert_close(losses["gc_loss"], 0.5 * gc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses["dfs_loss"], 0.3 * dfs, rtol=1e-12, atol=1e-12)
    # without separation, the shared features get no gradient from DFS
    v_leaf, t_leaf = v.clone().requires_grad_(), t.clone().requires_grad_()
    extra = {key: value.clone().requires_grad_() for key, value in extra.items()}
    for separation in (True, False):
        module = LatentStructureLoss(RegularizerConfig(dfs=1.0, dfs_separation=separation), contrastive=False)
        v_leaf.grad = None
        module(v_leaf, t_leaf, scale, **extra)["dfs_loss"].backward()
        assert (v_leaf.grad is not None and bool(v_leaf.grad.any())) == separation
    with pytest.raises(ValueError, match="normalization must be 'paper' or 'per_pair'"):
        geometric_consistency_loss(v, t, normalization="per_sample")


def test_module_inmodal_contrastive_is_the_papers_l_con():
    v, t, extra = unit(5, 4, 0), unit(5, 4, 1), features(5, 4)
    losses = LatentStructureLoss(RegularizerConfig(inmodal=True))(v, t, 20.0, **extra)
    assert set(losses) == {"contrastive_loss", "inmodal_loss"}
    v2v = reference_info_nce(v, extra["image_aug"], 1 / 20)
    t2t = reference_info_nce(t, extra["text_aug"], 1 / 20)
    clip = (reference_info_nce(v, t, 1 / 20) + reference_info_nce(t, v, 1 / 20)) / 2
    l_con = 0.5 * (clip + 0.5 * (v2v + t2t))
    torch.testing.assert_close(total_loss(losses).item(), l_con, rtol=1e-12, atol=1e-12)


def test_module_skips_zero_weight_terms_and_reports_needs():
    v, t = unit(8, 6, 0), unit(8, 6, 1)
    plain = LatentStructureLoss(RegularizerConfig())
    assert not plain.needs_augmented_views and not plain.needs_independent_features
    assert set(plain(v, t, 10.0)) == {"contrastive_loss"}
    assert set(plain(v, t, 10.0, **features())) == {"contrastive_loss"}  # unused views are ignored

    for config, needs_aug, needs_independent in [
        (RegularizerConfig(gc=1.0), True, False),
        (RegularizerConfig(bb=1.0), True, False),
        (RegularizerConfig(dfs=1.0), True, True),
        (RegularizerConfig(inmodal=True), True, False),
        (RegularizerConfig(align=1.0), False, False),
    ]:
        module = LatentStructureLoss(config)
        assert (module.needs_augmented_views, module.needs_independent_features) == (needs_aug, needs_independent)
    assert not LatentStructureLoss(RegularizerConfig(inmodal=True), contrastive=False).needs_augmented_views

    albef = LatentStructureLoss(RegularizerConfig(gc=1.0, inmodal=True), contrastive=False)
    assert set(albef(v, t, 10.0, **features())) == {"gc_loss"}


def test_module_missing_views_drop_the_aug_parts_or_raise():
    v, t, extra = unit(8, 6, 0), unit(8, 6, 1), features()
    gc = LatentStructureLoss(RegularizerConfig(gc=1.0), contrastive=False)
    torch.testing.assert_close(gc(v, t, 10.0)["gc_loss"], geometric_consistency_loss(v, t))
    dfs = LatentStructureLoss(RegularizerConfig(dfs=1.0, dfs_temperature=0.2), contrastive=False)
    independent = {"image_independent": extra["image_independent"], "text_independent": extra["text_independent"]}
    torch.testing.assert_close(
        dfs(v, t, 10.0, **independent)["dfs_loss"], feature_separation_loss(v, t, *independent.values())
    )
    with pytest.raises(ValueError, match="image_aug is required when regularizers.bb > 0"):
        LatentStructureLoss(RegularizerConfig(bb=1.0))(v, t, 10.0)
    with pytest.raises(ValueError, match="image_independent and text_independent are required"):
        dfs(v, t, 10.0)
    with pytest.raises(ValueError, match="regularizers.inmodal needs image_aug and text_aug"):
        LatentStructureLoss(RegularizerConfig(inmodal=True))(v, t, 10.0, image_aug=extra["image_aug"])


def test_module_draws_per_sample_bridge_times_from_the_range():
    v, t, extra = unit(64, 6, 0), unit(64, 6, 1), features(64)
    module = LatentStructureLoss(RegularizerConfig(bb=1.0, bb_s_range=(0.1, 0.3)), contrastive=False)
    torch.manual_seed(5)
    value = module(v, t, 10.0, image_aug=extra["image_aug"])["bb_loss"]
    torch.manual_seed(5)
    s = sample_bridge_times(64, 0.1, 0.3)
    torch.testing.assert_close(value, brownian_bridge_loss(v, t, extra["image_aug"], s.double()))
    assert not torch.allclose(value, brownian_bridge_loss(v, t, extra["image_aug"], 0.2))


@pytest.mark.slow
def test_regularizers_trace_into_one_graph_under_torch_compile():
    x = [unit(8, 4, seed, torch.float32).requires_grad_() for seed in range(6)]
    s, temperature = torch.full((8,), 0.3), torch.tensor(0.1)

    def all_three(v, t, v_aug, t_aug, u, w):
        return (
            geometric_consistency_loss(v, t, v_aug, t_aug)
            + brownian_bridge_loss(v, t, v_aug, s)
            + feature_separation_loss(v, t, u, w, v_aug, t_aug, temperature=temperature)
        )

    # fullgraph: any graph break (validation, the custom Gram backward) would raise here
    compiled = torch.compile(all_three, backend="aot_eager", fullgraph=True)
    eager_inputs = [a.detach().clone().requires_grad_() for a in x]
    compiled(*x).backward()
    all_three(*eager_inputs).backward()
    for a, b in zip(x, eager_inputs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_module_passes_non_finite_features_through_for_the_loop_to_report():
    """Divergence is the training loop's to report (by step and term), not an input error."""
    v, t = unit(4, 16, 0), unit(4, 16, 1)
    v[1, 2] = float("nan")
    losses = LatentStructureLoss(RegularizerConfig(gc=1.0))(v, t, torch.tensor(10.0))
    assert not torch.isfinite(losses["gc_loss"]) and not torch.isfinite(losses["contrastive_loss"])
