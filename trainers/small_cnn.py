"""A small CNN image tower for CPU-sized studies, registered with timm so open_clip builds it by name.

open_clip's smallest ModifiedResNet downsamples 4x in its stem before any residual block, and on
64-pixel images of objects a few pixels wide it learns the world's shapes slowly. This net (timm's
ByobNet blocks, declared, not hand-written) keeps a 32x32 map through its first stage and pools by
max, so "is this pattern anywhere" is one feature; it learns shapes faster than tiny-rn at about
half the cost per step. Used by the shipped `tiny-cnn` config (`"timm_model_name":
"latent_small_cnn"`, `"timm_pool": "max"`).
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg

SMALL_CNN_CFG = ByoModelCfg(
    blocks=(
        ByoBlockCfg(type="basic", d=1, c=16, s=1),
        ByoBlockCfg(type="basic", d=1, c=32, s=2),
        ByoBlockCfg(type="basic", d=1, c=32, s=2),
        ByoBlockCfg(type="basic", d=1, c=64, s=2),
    ),
    stem_chs=16,
    stem_type="3x3",  # one stride-2 3x3 conv: 64 px -> 32 px
    stem_pool="",
)

# read by register_model (timm looks up `default_cfgs` in the registering module); no weights exist
default_cfgs = generate_default_cfgs({
    "latent_small_cnn": {"input_size": (3, 64, 64), "pool_size": (4, 4), "first_conv": "stem.conv"},
})


@register_model
def latent_small_cnn(pretrained: bool = False, **kwargs) -> ByobNet:
    if pretrained:
        raise ValueError("latent_small_cnn: there are no pretrained weights (train it from scratch)")
    return build_model_with_cfg(ByobNet, "latent_small_cnn", pretrained=False, model_cfg=SMALL_CNN_CFG, **kwargs)
