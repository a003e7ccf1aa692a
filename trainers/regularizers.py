"""The paper's latent-modality-structure regularizers (docs/regularizers.md), and the loss module.

Functional forms take L2-normalized `[N, D]` features of any float dtype and return a float32
(or float64, for float64 inputs) scalar; they compute in float32 or wider even under autocast.

`LatentStructureLoss` is what a training loop calls: it returns open_clip-style named,
already-weighted terms (every key ending in `_loss`; the objective is their sum) and, under
`torch.distributed`, computes every term on the global batch gathered once from all ranks.

Efficiency: the geometric-consistency terms are squared Frobenius norms of differences of
Gram matrices, which can be evaluated with either N x N or D x D Gram matrices; the smaller
is used (O(min(N, D)^2) memory), each computed once. Symmetric Grams have a one-GEMM backward.
"""

from __future__ import annotations

import contextvars
import math
from typing import Literal

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import Tensor, nn

from trainers.config import RegularizerConfig

__all__ = [
    "LatentStructureLoss",
    "alignment_pressure_loss",
    "brownian_bridge_loss",
    "feature_separation_loss",
    "geometric_consistency_loss",
    "sample_bridge_times",
]


# --------------------------------------------------------------------------- validation


# Inside LatentStructureLoss the finite check is off: in training a NaN feature is divergence, not bad
# input, and the training loop watches the total loss's finiteness on the device and names the step and
# term (a check per tensor here would also cost a host sync each).
_finite_check = contextvars.ContextVar("regularizers_finite_check", default=True)


def _check_features(fn_name: str, **features: Tensor | None) -> None:
    """All given features are 2-D, floating, finite and shaped like the first one."""
    expected = None
    for name, x in features.items():
        if x is None:
            continue
        if not isinstance(x, Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{fn_name}: {name} must be a floating-point tensor, got {kind}")
        if expected is None:
            if x.dim() != 2 or x.shape[0] == 0:
                shape = tuple(x.shape)
                raise ValueError(f"{fn_name}: {name} must be 2-D [N, D] with N >= 1, got shape {shape}")
            expected = tuple(x.shape)
        elif tuple(x.shape) != expected:
            raise ValueError(f"{fn_name}: {name} has shape {tuple(x.shape)}, expected {expected}")
    # skipped while torch.compile traces (it would graph-break)
    if not _finite_check.get() or torch.compiler.is_compiling():
        return
    given = {name: x for name, x in features.items() if x is not None}
    # A NaN or inf makes its tensor's sum non-finite: one cheap reduction per argument and one host
    # sync in all. (A sum that overflows while every entry is finite is rechecked entry by entry.)
    if bool(torch.stack([x.detach().sum(dtype=torch.float64) for x in given.values()]).isfinite().all()):
        return
    for name, x in given.items():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{fn_name}: {name} has non-finite values (NaN or inf)")


def _wide(x: Tensor | None) -> Tensor | None:
    """float32 for half-precision inputs; float32/float64 stay as they are."""
    if x is None or x.dtype in (torch.float32, torch.float64):
        return x
    return x.float()


def _full_precision(x: Tensor) -> torch.autocast:
    """Disable autocast so the matmuls below really run in float32 or wider."""
    return torch.autocast(device_type=x.device.type, enabled=False)


# --------------------------------------------------------------------------- Gram helpers


class _SymmetricGram(torch.autograd.Function):
    """x x^T (or x^T x with `inner=True`), with a one-GEMM backward 2 g x (or 2 x g).

    The exact backward is (g + g^T) x; it equals 2 g x because every loss here reads a Gram matrix
    through a symmetric function of it (squared norms of differences of Gram matrices, w^T exp(G) w), so
    the incoming g is symmetric. Skipping g + g^T saves an N x N pass with a transposed read, which on
    a CPU cost more than the GEMM itself."""

    @staticmethod
    def forward(ctx, x: Tensor, inner: bool) -> Tensor:
        ctx.save_for_backward(x)
        ctx.inner = inner
        return x.T @ x if inner else x @ x.T

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return 2 * (x @ grad if ctx.inner else grad @ x), None


def _gram(x: Tensor, inner: bool = False) -> Tensor:
    return _SymmetricGram.apply(x, inner)


def _geometric_consistency_sum(v: Tensor, t: Tensor, v_aug: Tensor | None, t_aug: Tensor | None) -> Tensor:
    """N * (L_GC + L^a_GC) without the diagonal term, each Gram matrix computed once.

    Every term is a squared Frobenius norm of a difference of Gram-like matrices. With N <= D
    those are N x N; otherwise ||XX^T||^2 = ||X^TX||^2 and <XX^T, YY^T> = ||X^TY||^2 move the
    sums into D x D space.
    """
    with_aug = v_aug is not None and t_aug is not None
    n, d = v.shape
    if n <= d:
        gram_v, gram_t = _gram(v), _gram(t)  # (N, N)
        cross = v @ t.T  # (N, N); the cross-modal term compares it with its own transpose
        total = (cross - cross.T).square().sum() + (gram_v - gram_t).square().sum()
        if with_aug:
            total = total + (gram_v - _gram(v_aug)).square().sum() + (gram_t - _gram(t_aug)).square().sum()
        return total
    gram_v, gram_t = _gram(v, inner=True), _gram(t, inner=True)  # (D, D)
    mixed = t.T @ v  # (D, D)
    # cross + intra = ||P + Q||^2 - ||M + M^T||^2 with P = V^TV, Q = T^TT, M = T^TV
    total = (gram_v + gram_t).square().sum() - (mixed + mixed.T).square().sum()
    if with_aug:
        for x, x_aug, gram in ((v, v_aug, gram_v), (t, t_aug, gram_t)):
            aug_gram = _gram(x_aug, inner=True)
            total = total + gram.square().sum() + aug_gram.square().sum() - 2 * (x.T @ x_aug).square().sum()
    return total


def _row_dot(x: Tensor, y: Tensor) -> Tensor:
    return (x * y).sum(dim=1)  # (N,)


# --------------------------------------------------------------------------- the regularizers


def geometric_consistency_loss(
    v: Tensor,
    t: Tensor,
    v_aug: Tensor | None = None,
    t_aug: Tensor | None = None,
    normalization: Literal["paper", "per_pair"] = "paper",
) -> Tensor:
    """L_GC, plus L^a_GC when both augmented views are given (docs/regularizers.md, "Geometric consistency").

    normalization "paper" divides the sums over the N^2 pairs (j, k) by N, as the paper defines them:
    the value then grows about linearly with N. "per_pair" divides them by N^2 (a mean over pairs), so
    the same weight means the same strength at any batch size. L^a_GC's diagonal term is a mean over
    the N samples either way.
    """
    fn_name = "geometric_consistency_loss"
    if normalization not in ("paper", "per_pair"):
        raise ValueError(f"{fn_name}: normalization must be 'paper' or 'per_pair', got {normalization!r}")
    _check_features(fn_name, v=v, t=t, v_aug=v_aug, t_aug=t_aug)
    n = v.shape[0]
    with _full_precision(v):
        v, t, v_aug, t_aug = _wide(v), _wide(t), _wide(v_aug), _wide(t_aug)
        pairs = _geometric_consistency_sum(v, t, v_aug, t_aug)
        total = pairs / n if normalization == "paper" else pairs / (n * n)
        if v_aug is not None and t_aug is not None:
            total = total + (_row_dot(v, t) - _row_dot(v_aug, t_aug)).square().mean()
        return total


def sample_bridge_times(
    n: int,
    low: float,
    high: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Per-sample bridge times s ~ U(low, high), shape [n], float32; pass as `s` to `brownian_bridge_loss`."""
    if not 0.0 < low < high < 1.0:
        raise ValueError(f"sample_bridge_times: need 0 < low < high < 1, got low={low}, high={high}")
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def brownian_bridge_loss(v: Tensor, t: Tensor, v_aug: Tensor, s: float | Tensor = 0.25) -> Tensor:
    """L_BB = mean_j ||v^a_j - mu_j||^2, mu_j the normalized point s v_j + (1-s) t_j on the bridge."""
    fn_name = "brownian_bridge_loss"
    if v_aug is None:
        raise ValueError(f"{fn_name}: v_aug is required (the augmented view is the point on the bridge)")
    _check_features(fn_name, v=v, t=t, v_aug=v_aug)
    if isinstance(s, Tensor):
        if s.shape != (v.shape[0],):
            raise ValueError(f"{fn_name}: s has shape {tuple(s.shape)}, expected ({v.shape[0]},) or a float")
        s = _wide(s).unsqueeze(1)  # (N, 1) broadcasts over D
    elif not 0.0 < s < 1.0:
        raise ValueError(f"{fn_name}: s={s} must lie in (0, 1)")
    with _full_precision(v):
        v, t, v_aug = _wide(v), _wide(t), _wide(v_aug)
        mean = F.normalize(s * v + (1 - s) * t, dim=1)
        return (v_aug - mean).square().sum(dim=1).mean()


def _info_nce(x: Tensor, y: Tensor, temperature: float | Tensor) -> Tensor:
    logits = (x / temperature) @ y.T  # (N, N): row j scores x_j against every y_k; scaling x is O(ND)
    return F.cross_entropy(logits, torch.arange(x.shape[0], device=x.device))


class _Uniformity(torch.autograd.Function):
    """log mean_jk exp(-2 ||x_j - x_k||^2) (Wang & Isola, t = 2), all pairs including j = k.

    exp(-2 ||x_j - x_k||^2) = b_j exp(4 <x_j, x_k>) b_k with b = exp(-2 |x|^2): the N x N work is one
    GEMM, one exp and one quadratic form (for unit vectors every entry lies in [e^-4, e^4]). The backward
    is written out — dL/dx = (8/S) (diag(b) K diag(b)) x - (8/S) b * (K b) * x, with S = b^T K b — so that
    it makes one GEMM and one N x N temporary where autograd's chain makes four."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        weights = torch.exp(-2 * x.square().sum(dim=1))  # (N,)
        kernel = (x @ x.T).mul_(4).exp_()  # (N, N)
        kernel_weights = kernel @ weights  # (N,)
        total = weights @ kernel_weights
        ctx.save_for_backward(x, weights, kernel, kernel_weights, total)
        return torch.log(total) - 2 * math.log(x.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, weights, kernel, kernel_weights, total = ctx.saved_tensors
        scale = 8 * grad / total
        weighted = kernel * weights[:, None]
        weighted.mul_(weights)  # diag(b) K diag(b), symmetric: dL/dG = (scale / 2) of it
        return scale * (weighted @ x - (weights * kernel_weights)[:, None] * x)


def _uniformity(x: Tensor) -> Tensor:
    return _Uniformity.apply(x)


def feature_separation_loss(
    v: Tensor,
    t: Tensor,
    u: Tensor,
    w: Tensor,
    u_aug: Tensor | None = None,
    w_aug: Tensor | None = None,
    temperature: float | Tensor = 0.07,
    separation: bool = True,
) -> Tensor:
    """L_DFS = L_ortho + L_icon + L_uni; L_icon only when both augmented views are given.

    `separation=False` leaves out L_ortho: the independent heads keep their in-modal InfoNCE and
    uniformity but nothing pushes them away from the shared features (the control for "separation").
    """
    fn_name = "feature_separation_loss"
    _check_features(fn_name, v=v, t=t, u=u, w=w, u_aug=u_aug, w_aug=w_aug)
    # A tensor temperature is read on the host only where the features are checked too (not inside
    # LatentStructureLoss, whose temperature is 1/exp(log scale) or a validated number): no sync per step.
    checked = isinstance(temperature, float | int) or (_finite_check.get() and not torch.compiler.is_compiling())
    if checked and not float(temperature) > 0:
        raise ValueError(f"{fn_name}: temperature={float(temperature)} must be > 0")
    with _full_precision(v):
        v, t, u, w, u_aug, w_aug = map(_wide, (v, t, u, w, u_aug, w_aug))
        total = _uniformity(u) + _uniformity(w)
        if separation:
            total = total + (_row_dot(v, u).square() + _row_dot(t, w).square()).mean()
        if u_aug is not None and w_aug is not None:
            total = total + _info_nce(u, u_aug, temperature) + _info_nce(w, w_aug, temperature)
        return total


def alignment_pressure_loss(v: Tensor, t: Tensor) -> Tensor:
    """mean_j (1 - <v_j, t_j>): explicit pressure towards exact alignment (the toy's ablation)."""
    _check_features("alignment_pressure_loss", v=v, t=t)
    with _full_precision(v):
        return (1 - _row_dot(_wide(v), _wide(t))).mean()


# --------------------------------------------------------------------------- the loss module


def _distributed_world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _gather_global_batch(features: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
    """Every rank's features, concatenated in rank order, with gradients back to each rank's shard.

    All tensors travel in one collective: they are joined along dim 1, gathered, and split again.
    Each rank must hold the same number of rows.
    """
    from torch.distributed.nn.functional import all_gather

    present = {name: x for name, x in features.items() if x is not None}
    widths = [x.shape[1] for x in present.values()]
    dtype = present["image_features"].dtype
    for x in present.values():
        dtype = torch.promote_types(dtype, x.dtype)
    local = torch.cat([x.to(dtype) for x in present.values()], dim=1)  # (b, sum of widths)
    gathered = torch.cat(all_gather(local), dim=0)  # (W * b, sum of widths)
    parts = dict(zip(present, gathered.split(widths, dim=1), strict=True))
    return {name: parts.get(name) for name in features}


# The terms LatentStructureLoss returns (each only when its weight is above 0); the contrastive ones only
# with contrastive=True. tests/test_metric_names.py checks forward returns exactly these.
CONTRASTIVE_TERMS = ("contrastive_loss", "inmodal_loss")
REGULARIZER_TERMS = ("align_loss", "gc_loss", "bb_loss", "dfs_loss")


class LatentStructureLoss(nn.Module):
    """The base contrastive loss plus the paper's regularizers, as open_clip-style weighted terms.

    forward returns a dict whose `_loss` keys are already weighted; the objective is their sum
    (`trainers.family.total_loss`). Terms with weight 0 are neither computed nor returned.
    `contrastive=False` leaves out the contrastive (and in-modal) terms, for models such as
    ALBEF that have their own ITC.
    """

    def __init__(self, config: RegularizerConfig, contrastive: bool = True) -> None:
        super().__init__()
        self.config = config
        self.contrastive = contrastive
        # features are gathered here once, so ClipLoss always sees the global batch as one worker
        self.clip_loss = ClipLoss()

    @property
    def needs_augmented_views(self) -> bool:
        config = self.config
        return config.gc > 0 or config.bb > 0 or config.dfs > 0 or (self.contrastive and config.inmodal)

    @property
    def needs_independent_features(self) -> bool:
        return self.config.dfs > 0

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor | float,
        *,
        image_aug: Tensor | None = None,
        text_aug: Tensor | None = None,
        image_independent: Tensor | None = None,
        text_independent: Tensor | None = None,
        image_independent_aug: Tensor | None = None,
        text_independent_aug: Tensor | None = None,
    ) -> dict[str, Tensor]:
        config = self.config
        self._check_required(image_aug, text_aug, image_independent, text_independent)
        if not self.needs_augmented_views:
            image_aug = text_aug = None  # nothing uses them: don't gather them
        features = {
            "image_features": image_features,
            "text_features": text_features,
            "image_aug": image_aug,
            "text_aug": text_aug,
            "image_independent": image_independent if config.dfs > 0 else None,
            "text_independent": text_independent if config.dfs > 0 else None,
            "image_independent_aug": image_independent_aug if config.dfs > 0 else None,
            "text_independent_aug": text_independent_aug if config.dfs > 0 else None,
            "bridge_times": self._bridge_times(image_features),
        }
        if _distributed_world_size() > 1:
            features = _gather_global_batch(features)
        token = _finite_check.set(False)
        try:
            return self._terms(logit_scale, **features)
        finally:
            _finite_check.reset(token)

    def _check_required(
        self,
        image_aug: Tensor | None,
        text_aug: Tensor | None,
        image_independent: Tensor | None,
        text_independent: Tensor | None,
    ) -> None:
        config = self.config
        if config.bb > 0 and image_aug is None:
            raise ValueError("LatentStructureLoss: image_aug is required when regularizers.bb > 0")
        if self.contrastive and config.inmodal and (image_aug is None or text_aug is None):
            raise ValueError("LatentStructureLoss: regularizers.inmodal needs image_aug and text_aug")
        if config.dfs > 0 and (image_independent is None or text_independent is None):
            raise ValueError(
                "LatentStructureLoss: image_independent and text_independent are required when "
                "regularizers.dfs > 0"
            )

    def _bridge_times(self, image_features: Tensor) -> Tensor | None:
        """Per-sample s drawn on each rank's own rows (then gathered with them), or None for a fixed s."""
        if self.config.bb == 0 or self.config.bb_s_range is None:
            return None
        low, high = self.config.bb_s_range
        return sample_bridge_times(image_features.shape[0], low, high, device=image_features.device)[:, None]

    def _terms(
        self,
        logit_scale: Tensor | float,
        image_features: Tensor,
        text_features: Tensor,
        image_aug: Tensor | None,
        text_aug: Tensor | None,
        image_independent: Tensor | None,
        text_independent: Tensor | None,
        image_independent_aug: Tensor | None,
        text_independent_aug: Tensor | None,
        bridge_times: Tensor | None,
    ) -> dict[str, Tensor]:
        config = self.config
        v, t = image_features, text_features
        losses: dict[str, Tensor] = {}
        if self.contrastive:
            clip = self.clip_loss(v, t, logit_scale)
            if config.inmodal:
                # L_Con = 1/2 (L_clip + 1/2 (L_V2V + L_T2T)), CyCLIP's in-modal logits s V (V^a)^T
                losses["contrastive_loss"] = clip / 2
                in_modal = _info_nce(v, image_aug, 1 / logit_scale) + _info_nce(t, text_aug, 1 / logit_scale)
                losses["inmodal_loss"] = in_modal / 4
            else:
                losses["contrastive_loss"] = clip
        if config.align > 0:
            losses["align_loss"] = config.align * alignment_pressure_loss(v, t)
        if config.gc > 0:
            losses["gc_loss"] = config.gc * geometric_consistency_loss(
                v, t, image_aug, text_aug, normalization=config.gc_normalization
            )
        if config.bb > 0:
            s = config.bb_s if bridge_times is None else bridge_times[:, 0]
            losses["bb_loss"] = config.bb * brownian_bridge_loss(v, t, image_aug, s)
        if config.dfs > 0:
            # the DFS temperature follows the learned one without training it
            temperature = config.dfs_temperature or 1 / _detached(logit_scale)
            separation = feature_separation_loss(
                v, t, image_independent, text_independent, image_independent_aug, text_independent_aug,
                temperature=temperature, separation=config.dfs_separation,
            )
            losses["dfs_loss"] = config.dfs * separation
        return losses


def _detached(x: Tensor | float) -> Tensor | float:
    return x.detach() if isinstance(x, Tensor) else x
