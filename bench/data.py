"""Throughput of the synthetic world: generation on one core, and a DataLoader over it.

Generation = drawing scenes + rendering + captions, no cache. The DataLoader rows read the cached
split (what training does after the first run) with batch 128, augmentation off and on, 1 and 2
workers; the target is >= 2,000 samples/s with one worker, so data never bounds CPU training.

    python bench/data.py [--num-samples 4096] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from trainers.config import DataConfig
from trainers.data import build_pretrain_dataset
from trainers.data.captions import scene_captions
from trainers.data.render import render_scenes
from trainers.data.world import sample_scenes

TARGET_SAMPLES_PER_S = 2000


def generation_rate(data: DataConfig, count: int) -> float:
    start = time.perf_counter()
    scenes = sample_scenes(data.world_seed, "train", 0, count, data.info_gap, data.image_size, data.distractors)
    render_scenes(scenes, data.image_size)
    scene_captions(scenes)
    return count / (time.perf_counter() - start)


def loader_rate(data: DataConfig, augment: bool, num_workers: int, batch_size: int) -> float:
    dataset = build_pretrain_dataset(data, augment=augment)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0, drop_last=True)
    for _ in loader:  # warm-up epoch: starts the workers
        break
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["index"])
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core, as a training worker's data pipeline gets
    with tempfile.TemporaryDirectory() as cache_dir:
        data = DataConfig(train_size=args.num_samples, cache_dir=cache_dir)
        rows = [("generation (1 core, uncached)", "-", "-", generation_rate(data, args.num_samples))]
        build_pretrain_dataset(data)  # fill the cache once
        for augment in (False, True):
            for num_workers in (1, 2):
                rate = loader_rate(data, augment, num_workers, args.batch_size)
                rows.append((f"DataLoader batch {args.batch_size}", "on" if augment else "off", num_workers, rate))
    print(f"{'what':32} {'augment':>8} {'workers':>8} {'samples/s':>10}  target {TARGET_SAMPLES_PER_S}")
    for what, augment, workers, rate in rows:
        flag = "ok" if rate >= TARGET_SAMPLES_PER_S else "BELOW"
        print(f"{what:32} {augment:>8} {workers!s:>8} {rate:>10.0f}  {flag}")


if __name__ == "__main__":
    main()
