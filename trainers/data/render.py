"""Draw scenes to uint8 images in batches with numpy.

Reads only the visual fields of `Scenes` (shapes, colours, sizes, positions, textures,
background, noise seed): the text-only facts (owner, material) cannot reach the pixels.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from trainers.data.world import BACKGROUNDS, MAX_OBJECTS, SHAPES, TEXTURES, Scenes

# Pixel noise and texture contrast were lowered (from 14 and 0.45) because both hide the outline that
# carries the shape: the image towers learned colour and texture but not shape. Texture stays visible
# as an image-only attribute that captions never state (its probe, linear_probe/texture/*).
NOISE_STD = 4.0
TEXTURE_DEPTH = 0.3  # how much a texture darkens the object's colour
# Textures are drawn only inside this fraction of the object's extent, so its outline stays a clean
# edge of one colour: a texture reaching the edge cut it into the same small edges as the outline,
# and at information gap 1 (texture independent of the shape) the shape probe of the image
# embedding fell from 0.57 to 0.35 (tiny-cnn, 512 steps, seed 3 of info_gap.yaml's world).
TEXTURE_INSET = 0.7


def _circle(u, v):
    return u * u + v * v <= 1.0


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8


def _triangle(u, v):
    return (v <= 0.75) & (1.6 * np.abs(u) <= v + 1.0)


def _diamond(u, v):
    return np.abs(u) + np.abs(v) <= 1.0


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.3)


def _star(u, v):
    r = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    return r <= 0.55 + 0.45 * np.cos(5 * theta + np.pi / 2) ** 2


def _hexagon(u, v):
    au, av = np.abs(u), np.abs(v)
    return np.maximum(au * 0.866 + av * 0.5, av) <= 0.9


SHAPE_MASKS = (_circle, _square, _triangle, _diamond, _cross, _ring, _star, _hexagon)
assert len(SHAPE_MASKS) == len(SHAPES)


@lru_cache(maxsize=8)
def _fields(image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel grids, texture fields (T, H, W) in {0, 1} and background fields (B, H, W) in [-1, 1]."""
    y, x = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    period = max(2, image_size // 21)  # ~3 px at 64 px: fine enough to be hard, coarse enough to see
    textures = np.stack([
        np.zeros_like(x),
        ((x + y) // period) % 2,
        ((x % (2 * period) < period) & (y % (2 * period) < period)).astype(np.float32),
        ((x // period + y // period) % 2),
    ]).astype(np.float32)
    step = max(4, image_size // 8)
    backgrounds = np.stack([
        np.zeros_like(x),
        (x + y) / image_size - 1.0,
        np.where((x % step == 0) | (y % step == 0), 1.0, 0.0),
        np.sin(y * 2 * np.pi / step),
    ]).astype(np.float32)
    assert len(textures) == len(TEXTURES) and len(backgrounds) == len(BACKGROUNDS)
    return np.stack([x, y]), textures, backgrounds


RENDER_CHUNK = 128  # samples per vectorized pass: keeps the float canvases in cache


def render_scenes(scenes: Scenes, image_size: int) -> np.ndarray:
    """uint8 images (N, 3, H, W) of the scenes; identical bytes for identical visual fields."""
    images = np.empty((len(scenes), 3, image_size, image_size), dtype=np.uint8)
    for start in range(0, len(scenes), RENDER_CHUNK):
        rows = np.arange(start, min(start + RENDER_CHUNK, len(scenes)))
        images[rows] = _render_chunk(scenes.subset(rows), image_size)
    return images


def _render_chunk(scenes: Scenes, image_size: int) -> np.ndarray:
    grid, textures, backgrounds = _fields(image_size)
    canvas = scenes.background_rgb[:, :, None, None] + 35.0 * backgrounds[scenes.background][:, None]
    canvas = np.ascontiguousarray(canvas, dtype=np.float32)  # (N, 3, H, W)
    for slot in range(MAX_OBJECTS):  # distractors first, the main object last (on top)
        _draw_slot(canvas, scenes, slot, grid, textures)
    canvas += _pixel_noise(scenes.noise_seed, canvas.shape[1:])
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def _pixel_noise(noise_seeds: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform per-sample noise with zero mean and NOISE_STD deviation, from each sample's own seed.

    Raw bytes are ~10x faster to draw than standard_normal, which would dominate rendering time.
    """
    numel = int(np.prod(shape))
    raw = b"".join(np.random.Generator(np.random.PCG64(int(seed))).bytes(numel) for seed in noise_seeds)
    uniform = np.frombuffer(raw, dtype=np.uint8).reshape(len(noise_seeds), *shape).astype(np.float32)
    return (uniform - 127.5) * np.float32(NOISE_STD / 73.9)  # 73.9: std of a uniform byte


def _draw_slot(canvas: np.ndarray, scenes: Scenes, slot: int, grid: np.ndarray, textures: np.ndarray) -> None:
    shape = scenes.shape[:, slot]
    for shape_id, mask_fn in enumerate(SHAPE_MASKS):
        rows = np.flatnonzero(shape == shape_id)
        if len(rows) == 0:
            continue
        radius = scenes.radius[rows, slot][:, None, None]
        u = (grid[0][None] - scenes.centre[rows, slot, 0][:, None, None]) / radius  # (n, H, W)
        v = (grid[1][None] - scenes.centre[rows, slot, 1][:, None, None]) / radius
        mask = mask_fn(u, v)
        interior = mask & mask_fn(u / TEXTURE_INSET, v / TEXTURE_INSET)
        shade = 1.0 - TEXTURE_DEPTH * textures[scenes.texture[rows, slot]] * interior  # (n, H, W)
        colour = scenes.colour_rgb[rows, slot][:, :, None, None] * shade[:, None]  # (n, 3, H, W)
        canvas[rows] = np.where(mask[:, None], colour, canvas[rows])
