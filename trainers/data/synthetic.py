"""Splits of the synthetic world: scenes, their images (cached on disk) and captions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainers.config import DataConfig
from trainers.data.cache import cache_key, cache_root, load_array, load_json, save_array, save_json
from trainers.data.captions import scene_captions
from trainers.data.render import render_scenes
from trainers.data.world import WORLD_VERSION, Scenes, sample_scenes


@dataclass
class WorldSplit:
    scenes: Scenes
    images: np.ndarray  # (N, 3, H, W) uint8, memory-mapped when it came from the cache
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def world_split(data: DataConfig, split: str, count: int) -> WorldSplit:
    """The first `count` samples of a split, rendered once and then read from the cache."""
    scenes = sample_scenes(data.world_seed, split, 0, count, data.info_gap, data.image_size, data.distractors)
    key = cache_key({
        "version": WORLD_VERSION, "seed": data.world_seed, "split": split, "count": count,
        "info_gap": data.info_gap, "image_size": data.image_size, "distractors": data.distractors,
    })
    folder = cache_root(data.cache_dir) / "synthetic"
    images_path, captions_path = folder / f"{key}.npy", folder / f"{key}.json"
    images, captions = load_array(images_path), load_json(captions_path)
    if images is None or captions is None or len(images) != count:
        images, captions = render_scenes(scenes, data.image_size), scene_captions(scenes)
        save_array(images_path, images)
        save_json(captions_path, captions)
    return WorldSplit(scenes=scenes, images=images, captions=captions)
