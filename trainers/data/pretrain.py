"""Image-caption pre-training data sets: the synthetic world, CSV/TSV, ALBEF-style JSON, WebDataset.

Items are dicts {"image": uint8 (3, H, W), "caption": str, "index": int}, plus "image_aug" and
"caption_aug" when augment=True; views depend only on (seed, index, epoch) (see `set_epoch`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch
import webdataset as wds
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from trainers.config import DataConfig
from trainers.data.augment import ImageAugmentation, eda_augment, view_seed
from trainers.data.images import decode_image_bytes, load_image, read_json_annotations, resolve
from trainers.data.synthetic import world_split

logger = logging.getLogger(__name__)
Item = dict[str, torch.Tensor | str | int]


class _Views:
    """Builds an item and, when augmenting, its views for the current epoch."""

    def __init__(self, image_size: int, augment: bool, seed: int):
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.image_augmentation = ImageAugmentation(image_size) if augment else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def item(self, index: int, image: torch.Tensor, caption: str) -> Item:
        item: Item = {"image": image, "caption": caption, "index": index}
        if self.image_augmentation is not None:
            seed = view_seed(self.seed, index, self.epoch)
            item["image_aug"] = self.image_augmentation(image, seed)
            item["caption_aug"] = eda_augment(caption, seed)
        return item


class SyntheticPretrainDataset(Dataset):
    def __init__(self, data: DataConfig, split: str, augment: bool):
        count = data.train_size if split == "train" else data.eval_size
        self.split = world_split(data, split, count)
        self.views = _Views(data.image_size, augment, data.world_seed)

    def __len__(self) -> int:
        return len(self.split)

    def set_epoch(self, epoch: int) -> None:
        self.views.set_epoch(epoch)

    def __getitem__(self, index: int) -> Item:
        image = torch.from_numpy(self.split.images[index].copy())  # copy: the cache is a read-only memmap
        return self.views.item(index, image, self.split.captions[index])


class AnnotatedPretrainDataset(Dataset):
    """(image path, caption) rows from a CSV/TSV or a JSON annotation file; images read lazily."""

    def __init__(self, rows: list[tuple[Path, str, str]], data: DataConfig, augment: bool):
        self.rows = rows  # (image path, caption, "file:row" for error messages)
        self.image_size = data.image_size
        self.views = _Views(data.image_size, augment, data.world_seed)

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.views.set_epoch(epoch)

    def __getitem__(self, index: int) -> Item:
        path, caption, where = self.rows[index]
        return self.views.item(index, load_image(path, self.image_size, where), caption)


def read_csv_rows(path: str, data: DataConfig) -> list[tuple[Path, str, str]]:
    """open_clip-style CSV/TSV: `image_key` and `caption_key` columns, paths relative to image_root."""
    frame = pd.read_csv(path, sep=data.separator, dtype=str, keep_default_na=False)
    for column, key in ((data.image_key, "image_key"), (data.caption_key, "caption_key")):
        if column not in frame.columns:
            raise ValueError(
                f"{path}: no column {column!r} (data.{key}); columns are {', '.join(map(str, frame.columns))}"
            )
    root = data.image_root or Path(path).parent
    # row numbers count the header as line 1, as an editor shows them
    return [
        (resolve(image, root), caption, f"{path}:row {row + 2}")
        for row, (image, caption) in enumerate(zip(frame[data.image_key], frame[data.caption_key], strict=True))
    ]


def read_albef_caption_rows(path: str, image_root: str | None) -> list[tuple[Path, str, str]]:
    """ALBEF pre-training / COCO / Flickr JSON: [{"image": path, "caption": str | [str, ...]}, ...]."""
    rows = []
    for row, entry in enumerate(read_json_annotations(path, ("image", "caption"))):
        captions = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        rows += [(resolve(entry["image"], image_root), caption, f"{path}:entry {row}") for caption in captions]
    return rows


class WebDatasetPretrain(IterableDataset):
    """Image + txt samples from tar shards; a sample whose image does not decode is skipped and counted."""

    IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

    def __init__(self, urls: str | list[str], data: DataConfig, augment: bool):
        self.urls = urls
        self.image_size = data.image_size
        self.views = _Views(data.image_size, augment, data.world_seed)
        self.num_corrupt = 0  # per process: each DataLoader worker counts its own shards

    def set_epoch(self, epoch: int) -> None:
        self.views.set_epoch(epoch)

    def __iter__(self) -> Iterator[Item]:
        shards = wds.WebDataset(self.urls, shardshuffle=False, empty_check=False,
                                workersplitter=wds.split_by_worker)
        worker = get_worker_info()
        offset = 0 if worker is None else worker.id * 1_000_000_000  # distinct indices for view seeds
        for position, sample in enumerate(shards):
            item = self._decode(sample, offset + position)
            if item is not None:
                yield item

    def _decode(self, sample: dict, index: int) -> Item | None:
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        extension = next((e for e in self.IMAGE_EXTENSIONS if e in sample), None)
        if extension is None or "txt" not in sample:
            self._skip(where, "missing image or txt member")
            return None
        try:
            image = decode_image_bytes(sample[extension], self.image_size)
        except ValueError as exc:
            self._skip(where, str(exc))
            return None
        return self.views.item(index, image, sample["txt"].decode("utf-8").strip())

    def _skip(self, where: str, reason: str) -> None:
        self.num_corrupt += 1
        logger.warning("skipping sample %s: %s (%d skipped so far)", where, reason, self.num_corrupt)


def build_pretrain_dataset(data: DataConfig, split: str = "train", augment: bool = False) -> Dataset:
    """The pre-training set of `data`. Real data sets ignore `split` (their files are the split)."""
    if data.dataset == "synthetic":
        return SyntheticPretrainDataset(data, split, augment)
    paths = [p for p in (data.path or "").split("::") if p]
    if data.dataset == "webdataset":
        return WebDatasetPretrain(paths if len(paths) > 1 else paths[0], data, augment)
    if data.dataset == "csv":
        rows = [row for path in paths for row in read_csv_rows(path, data)]
    else:  # coco_json
        rows = [row for path in paths for row in read_albef_caption_rows(path, data.image_root)]
    return AnnotatedPretrainDataset(rows, data, augment)
