"""Augmented views for the regularizers: random resized crop + flip + colour jitter, and EDA for text.

A horizontally flipped view swaps left and right, so its caption is mirrored too (`mirror_caption`):
a view's caption never contradicts its image, which BB and GC's augmented pair term rely on.

The image view reproduces torchvision.transforms.v2's kernels (`resized_crop` with nearest
interpolation, `horizontal_flip`, `adjust_brightness/contrast/saturation`; tests check parity)
in numpy, because v2's per-call overhead on a 64 px image measured ~3 ms here: 60x the budget of
a DataLoader worker that must feed 2,000 samples/s. Each view is a pure function of
(world seed, training seed, index, epoch), so runs replay exactly, workers share no random state,
and the seeds of a study draw different views.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from trainers.data.world import SYNONYMS

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def view_seed(seed: int, index: int, epoch: int, train_seed: int = 0) -> int:
    """One integer per (data seed, sample, epoch, training seed); distinct for distinct tuples of
    non-negative values below the multipliers (Python ints do not overflow)."""
    return ((train_seed * 1_000_003 + seed) * 1_000_003 + epoch) * 10_000_019 + index


MIRRORED_WORDS = {"left": "right", "right": "left"}


def mirror_caption(caption: str) -> str:
    """The caption of the horizontally mirrored image: "left" and "right" trade places."""
    return re.sub(r"\b(left|right)\b", lambda match: MIRRORED_WORDS[match.group(1)], caption)


@dataclass(frozen=True)
class ViewParams:
    top: int
    left: int
    height: int
    width: int
    flip: bool
    brightness: float
    contrast: float
    saturation: float


def draw_view_params(rng: random.Random, image_height: int, image_width: int,
                     crop_scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                     jitter: float = 0.3) -> ViewParams:
    """RandomResizedCrop's area/aspect draw (10 tries, then the whole image) and ColorJitter factors."""
    area = image_height * image_width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    top, left, height, width = 0, 0, image_height, image_width
    for _ in range(10):
        target_area = area * rng.uniform(*crop_scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= image_width and 0 < h <= image_height:
            top, left, height, width = rng.randint(0, image_height - h), rng.randint(0, image_width - w), h, w
            break
    factors = [rng.uniform(1 - jitter, 1 + jitter) for _ in range(3)]
    return ViewParams(top, left, height, width, rng.random() < 0.5, *factors)


def _blend_(image: np.ndarray, other: np.ndarray | float, ratio: float) -> None:
    """In place on float32 values that are whole numbers: torchvision's uint8 _blend, which computes
    image * ratio + other * (1 - ratio) in float32, clamps, and truncates back to uint8."""
    image *= np.float32(ratio)
    image += np.float32(1.0 - ratio) * other
    np.clip(image, 0, 255, out=image)
    np.floor(image, out=image)


def _gray(image: np.ndarray) -> np.ndarray:
    r, g, b = image
    return np.floor(r * np.float32(GRAY_WEIGHTS[0]) + g * np.float32(GRAY_WEIGHTS[1]) + b * np.float32(GRAY_WEIGHTS[2]))


def apply_view(image: np.ndarray, params: ViewParams, size: int) -> np.ndarray:
    """uint8 (3, H, W) -> uint8 (3, size, size): crop, nearest resize, flip, brightness, contrast, saturation."""
    rows = params.top + np.floor(np.arange(size) * (params.height / size)).astype(np.int64)
    cols = params.left + np.floor(np.arange(size) * (params.width / size)).astype(np.int64)
    if params.flip:
        cols = cols[::-1]
    view = image.take(rows, axis=1).take(cols, axis=2).astype(np.float32)
    _blend_(view, 0.0, params.brightness)
    _blend_(view, _gray(view).mean(dtype=np.float32), params.contrast)
    _blend_(view, _gray(view)[None], params.saturation)
    return view.astype(np.uint8)


class ImageAugmentation:
    def __init__(self, image_size: int, crop_scale: tuple[float, float] = (0.5, 1.0)):
        self.image_size, self.crop_scale = image_size, crop_scale

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        return self.view(image, seed)[0]

    def view(self, image: torch.Tensor, seed: int) -> tuple[torch.Tensor, bool]:
        """The view and whether it is mirrored (its caption must then be mirrored as well)."""
        params = draw_view_params(random.Random(seed), image.shape[-2], image.shape[-1], self.crop_scale)
        return torch.from_numpy(apply_view(image.numpy(), params, self.image_size)), params.flip


def eda_augment(caption: str, seed: int, synonyms: Mapping[str, Sequence[str]] = SYNONYMS,
                replace_probability: float = 0.3, swap_probability: float = 0.3,
                delete_probability: float = 0.1) -> str:
    """EDA (Wei & Zou 2019) without insertion: synonym replacement, one random swap, random deletion."""
    rng = random.Random(seed)
    words = caption.split()
    words = [rng.choice(synonyms[w]) if w in synonyms and rng.random() < replace_probability else w
             for w in words]
    if len(words) > 1 and rng.random() < swap_probability:
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    kept = [w for w in words if rng.random() >= delete_probability]
    return " ".join(kept or [rng.choice(words)])
