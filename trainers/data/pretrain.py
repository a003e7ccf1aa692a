"""Image-caption pre-training data sets: the synthetic world, CSV/TSV, ALBEF-style JSON, WebDataset.

Items are dicts {"image": uint8 (3, H, W), "caption": str, "index": int}, plus "image_aug" and
"caption_aug" when augment=True; views depend only on (seed, index, epoch) (see `set_epoch`).
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator
from itertools import count, islice
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import webdataset as wds
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from trainers.config import DataConfig
from trainers.data.augment import ImageAugmentation, eda_augment, mirror_caption, view_seed
from trainers.data.images import (
    InputDataError,
    check_image_file,
    decode_image_bytes,
    load_image,
    read_json_annotations,
    read_json_file,
    resolve,
)
from trainers.data.synthetic import world_split
from trainers.storage import is_uri, local_path

logger = logging.getLogger(__name__)
Item = dict[str, torch.Tensor | str | int]


class _Views:
    """Builds an item and, when augmenting, its views for the current epoch."""

    def __init__(self, image_size: int, augment: bool, world_seed: int, train_seed: int):
        # views follow the training seed too: otherwise every seed of a study would see the same views
        self.augment, self.world_seed, self.train_seed, self.epoch = augment, world_seed, train_seed, 0
        self.image_augmentation = ImageAugmentation(image_size) if augment else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def item(self, index: int, image: torch.Tensor, caption: str) -> Item:
        item: Item = {"image": image, "caption": caption, "index": index}
        if self.image_augmentation is not None:
            seed = view_seed(self.world_seed, index, self.epoch, self.train_seed)
            item["image_aug"], flipped = self.image_augmentation.view(image, seed)
            # a mirrored view is described by the mirrored caption: "left" and "right" trade places
            item["caption_aug"] = eda_augment(mirror_caption(caption) if flipped else caption, seed)
        return item


class SyntheticPretrainDataset(Dataset):
    def __init__(self, data: DataConfig, split: str, augment: bool, train_seed: int = 0):
        count = data.train_size if split == "train" else data.eval_size
        self.split = world_split(data, split, count)
        self.views = _Views(data.image_size, augment, data.world_seed, train_seed)

    def __len__(self) -> int:
        return len(self.split)

    def set_epoch(self, epoch: int) -> None:
        self.views.set_epoch(epoch)

    def __getitem__(self, index: int) -> Item:
        image = torch.from_numpy(self.split.images[index].copy())  # copy: the cache is a read-only memmap
        return self.views.item(index, image, self.split.captions[index])


class AnnotatedPretrainDataset(Dataset):
    """(image path, caption) rows from a CSV/TSV or a JSON annotation file; images read lazily."""

    def __init__(self, rows: list[tuple[Path, str, str]], data: DataConfig, augment: bool, train_seed: int = 0):
        self.rows = rows  # (image path, caption, "file:row" for error messages)
        self.image_size = data.image_size
        self.views = _Views(data.image_size, augment, data.world_seed, train_seed)

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.views.set_epoch(epoch)

    def __getitem__(self, index: int) -> Item:
        path, caption, where = self.rows[index]
        return self.views.item(index, load_image(path, self.image_size, where), caption)


def read_csv_rows(path: str, data: DataConfig) -> list[tuple[Path, str, str]]:
    """open_clip-style CSV/TSV: `image_key` and `caption_key` columns, paths relative to image_root."""
    try:
        frame = pd.read_csv(path, sep=data.separator, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file (expected a header naming the columns {data.image_key!r} and "
                         f"{data.caption_key!r})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a {'TSV' if data.separator == chr(9) else 'CSV'} file "
                         f"({str(exc).strip().splitlines()[-1]})") from None
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
        # relative paths resolve against image_root, else the JSON's folder (as a CSV's do)
        root = image_root if image_root is not None else Path(path).parent
        rows += [(resolve(entry["image"], root), caption, f"{path}:entry {row}") for caption in captions]
    return rows


def shard_urls(path: str) -> list[str]:
    """The shards of `data.path`: a brace pattern, `::`-separated list, local paths or URLs."""
    return list(wds.shardlists.expand_urls(path))


def known_sample_count(urls: list[str]) -> int | None:
    """The shards' sample count from a `sizes.json` beside them ({shard file name: count}, as
    open_clip's `--train-data` reads it), or None when there is none or it does not cover every shard."""
    folders = {str(local_path(url).parent) for url in urls if not is_uri(url)}
    if len(folders) != 1:
        return None
    sizes_file = Path(folders.pop()) / "sizes.json"
    if not sizes_file.is_file():
        return None
    sizes = read_json_file(sizes_file)
    if not isinstance(sizes, dict):
        raise ValueError(f"{sizes_file}: expected a JSON object {{shard file name: sample count}}")
    names = [Path(url).name for url in urls]
    missing = [name for name in names if name not in sizes]
    if missing:
        raise ValueError(f"{sizes_file}: no sample count for shard {missing[0]}")
    return sum(int(sizes[name]) for name in names)


def _distributed_position() -> tuple[int, int]:
    """(rank, world size) of this Ray Train worker; (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _SplitByRank:
    """webdataset node splitter with the rank fixed when the data set was built (in the Ray Train
    worker), so DataLoader worker processes need no process group of their own."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, shards: Iterator[dict]) -> Iterator[dict]:
        yield from islice(shards, self.rank, None, self.world_size)


class WebDatasetPretrain(IterableDataset):
    """Image-caption samples from WebDataset tar shards (`data.image_key` / `data.caption_key` members).

    An epoch is `data.samples_per_epoch` samples (else the shards' count from `sizes.json`), as
    open_clip's `--train-num-samples`: each of W Ray Train workers × L DataLoader workers reads a
    disjoint share of the shards (shuffled per epoch with the same seed on every rank, then split
    by rank and by loader worker) and yields exactly its share of the epoch, cycling over its shards
    if they run out, so that every rank runs the same number of steps (DDP would hang otherwise).
    A sample that does not decode, or the rest of a truncated shard, is skipped with a warning and
    counted; a loader worker that skips more than `data.max_skipped_fraction` of what it read fails
    with a message naming the fraction and the last bad shard.
    """

    def __init__(self, urls: list[str], data: DataConfig, augment: bool, batch_size: int | None = None,
                 shuffle_seed: int = 0, rank_and_world_size: tuple[int, int] | None = None):
        self.urls = urls
        self.image_size = data.image_size
        self.image_key, self.caption_key = data.image_key, data.caption_key
        self.max_skipped_fraction = data.max_skipped_fraction
        self.views = _Views(data.image_size, augment, data.world_seed, shuffle_seed)
        self.shuffle_seed = shuffle_seed
        self.rank, self.world_size = rank_and_world_size or _distributed_position()
        self.loader_workers = max(1, data.num_loader_workers)
        self.samples_per_epoch = data.samples_per_epoch or known_sample_count(urls)
        self.per_loader_worker = None  # None: one pass over the shards (preview, tokenizer training)
        if self.samples_per_epoch is not None:
            self.per_loader_worker = check_epoch_split(len(urls), self.samples_per_epoch, self.world_size,
                                                       self.loader_workers, batch_size)
        self.num_corrupt = 0  # per process: each DataLoader worker counts its own shards
        self.num_read = 0

    def __len__(self) -> int:
        """Samples this rank yields per epoch (the loop sizes its schedule from it)."""
        if self.per_loader_worker is None:
            # TypeError, as for any unsized iterable (list() then just iterates); validation catches it before Ray
            raise TypeError("data.samples_per_epoch: required for WebDataset shards without a sizes.json "
                             "beside them (the length of an epoch of a stream)")
        return self.per_loader_worker * self.loader_workers

    def set_epoch(self, epoch: int) -> None:
        self.views.set_epoch(epoch)

    def _pipeline(self, reader: int, pass_number: int) -> wds.DataPipeline:
        epoch_seed = self.shuffle_seed * 100_003 + self.views.epoch
        return wds.DataPipeline(
            # the same permutation on every rank (seed and epoch), so the split below stays disjoint
            wds.SimpleShardList(self.urls, seed=epoch_seed),
            _SplitByRank(self.rank, self.world_size),
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=self._skip_and_continue),
            # samples mixed across this reader's open shards, as open_clip's _SHARD_SHUFFLE buffer
            wds.shuffle(1000, initial=100, seed=(epoch_seed * 1_000_003 + reader) * 101 + pass_number),
        )

    def __iter__(self) -> Iterator[Item]:
        worker = get_worker_info()
        worker_id = 0 if worker is None else worker.id
        reader = self.rank * self.loader_workers + worker_id
        offset = reader * 1_000_000_000  # distinct indices for view seeds
        items = (item for item in self._passes(worker_id, reader) if item is not None)
        for position, (image, caption) in enumerate(islice(items, self.per_loader_worker)):
            yield self.views.item(offset + position, image, caption)

    def _passes(self, worker_id: int, reader: int) -> Iterator[tuple[torch.Tensor, str] | None]:
        """Decoded samples, pass after pass over this worker's shards while an epoch asks for more."""
        for pass_number in count():
            read_before = self.num_read
            for sample in self._pipeline(reader, pass_number):
                self.num_read += 1
                yield self._decode(sample)
            self._check_skipped()
            if self.num_read == read_before:
                raise InputDataError(f"{self._where_shards()}: Ray Train worker {self.rank}, loader worker {worker_id} "
                                 f"read no sample from its {len(self.urls) // (self.world_size * self.loader_workers)}"
                                 " shard(s)")
            if self.per_loader_worker is None:
                return

    def _where_shards(self) -> str:
        return self.urls[0] if len(self.urls) == 1 else f"{self.urls[0]} … {self.urls[-1]}"

    def _decode(self, sample: dict) -> tuple[torch.Tensor, str] | None:
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        # "jpg;png": the first member present, as open_clip's --csv-img-key / webdataset's to_tuple
        image_key = next((key for key in self.image_key.split(";") if key in sample), self.image_key)
        missing = [f"{key!r} (data.{name})" for key, name, present in
                   ((self.image_key, "image_key", image_key in sample),
                    (self.caption_key, "caption_key", self.caption_key in sample)) if not present]
        if missing:
            members = ", ".join(k for k in sample if not k.startswith("__"))
            self._skip(where, f"no {' or '.join(missing)} member; it has {members}")
            return None
        try:
            image = decode_image_bytes(sample[image_key], self.image_size)
            caption = sample[self.caption_key].decode("utf-8").strip()
        except (ValueError, UnicodeDecodeError) as exc:
            self._skip(where, str(exc))
            return None
        return image, caption

    def _skip_and_continue(self, exc: Exception) -> bool:
        """webdataset's handler (as `wds.warn_and_continue`), counting: a truncated or unreadable shard."""
        # webdataset appends the shard's url to the exception's args
        where = str(exc.args[-1]) if exc.args else "?"
        self._skip(where, f"{type(exc).__name__}: {exc.args[0] if exc.args else exc}; the rest of the shard is skipped")
        return True

    def _skip(self, where: str, reason: str) -> None:
        self.num_corrupt += 1
        self.last_skipped = where
        logger.warning("skipping sample %s: %s (%d skipped so far)", where, reason, self.num_corrupt)
        if self.num_read >= 100:
            self._check_skipped()

    def _check_skipped(self) -> None:
        if self.num_read and self.num_corrupt / self.num_read > self.max_skipped_fraction:
            raise InputDataError(f"{self.last_skipped}: {self.num_corrupt} of {self.num_read} samples read were "
                                 "skipped as unreadable, more than data.max_skipped_fraction = "
                                 f"{self.max_skipped_fraction}")


# Above this many rows, only each image's presence is checked before training, not its header.
IMAGE_HEADER_CHECK_ROWS = 200_000


def check_annotated_pretraining(data: DataConfig, world_size: int, batch_size: int) -> None:
    """Before Ray starts: a CSV/TSV or JSON pre-training set reads, every image it names exists (and its
    header reads, up to IMAGE_HEADER_CHECK_ROWS rows), and it holds at least one batch per worker."""
    dataset = build_pretrain_dataset(data, "train")
    rows = dataset.rows
    source = data.path
    if not rows:
        raise ValueError(f"{source}: no image-caption pairs (only a header?)")
    if len(rows) < batch_size * world_size:
        raise ValueError(f"{source}: {len(rows)} pairs are fewer than one batch of {batch_size} on each of "
                         f"{world_size} worker(s) (train.batch_size, resources.num_workers): an epoch would train "
                         "0 steps")
    for path, _, where in rows:
        check_image_file(path, where, read_header=len(rows) <= IMAGE_HEADER_CHECK_ROWS)


def check_webdataset(data: DataConfig, world_size: int, batch_size: int) -> None:
    """Before Ray starts: every local shard exists and is a tar file, the epoch length is known, and
    the shards and samples can be shared out among `world_size` Ray Train workers' loader workers."""
    urls = shard_urls(data.path)
    for url in urls:
        if is_uri(url):
            continue
        if not local_path(url).is_file():
            raise ValueError(f"data.path: shard {url} does not exist")
        if not tarfile.is_tarfile(local_path(url)):
            raise ValueError(f"data.path: shard {url} is not a tar file")
    samples = data.samples_per_epoch or known_sample_count(urls)
    if samples is None:
        raise ValueError("data.samples_per_epoch: required for WebDataset shards without a sizes.json beside them "
                         "(the number of samples in one epoch of the stream, as open_clip's --train-num-samples)")
    check_epoch_split(len(urls), samples, world_size, max(1, data.num_loader_workers), batch_size)


def check_epoch_split(num_shards: int, samples_per_epoch: int, world_size: int, loader_workers: int,
                      batch_size: int | None) -> int:
    """Samples each DataLoader worker yields per epoch; raises when the shards or samples cannot be
    shared out (every worker needs at least one shard and one batch)."""
    readers = world_size * loader_workers
    if num_shards < readers:
        raise ValueError(f"data.path: {num_shards} shard(s) cannot be split among {world_size} Ray Train worker(s) "
                         f"x {loader_workers} loader worker(s); give at least {readers} shards or fewer workers")
    per_worker = samples_per_epoch // readers
    if batch_size is not None:
        per_worker = per_worker // batch_size * batch_size
        if per_worker == 0:
            raise ValueError(f"data.samples_per_epoch: {samples_per_epoch} samples give less than one batch of "
                             f"{batch_size} to each of {world_size} Ray Train worker(s) x {loader_workers} "
                             "loader worker(s)")
    elif per_worker == 0:
        raise ValueError(f"data.samples_per_epoch: {samples_per_epoch} is fewer than the {readers} readers")
    return per_worker


def build_pretrain_dataset(data: DataConfig, split: str = "train", augment: bool = False,
                           batch_size: int | None = None, train_seed: int = 0) -> Dataset:
    """The pre-training set of `data`. Real data sets ignore `split` (their files are the split).
    `batch_size` (per worker) makes a WebDataset epoch a whole number of batches on every worker;
    `train_seed` (the run's `train.seed`) seeds, with the world seed, the augmented views, and a
    WebDataset's per-epoch shard order."""
    if data.dataset == "synthetic":
        return SyntheticPretrainDataset(data, split, augment, train_seed)
    if data.dataset == "webdataset":
        return WebDatasetPretrain(shard_urls(data.path), data, augment, batch_size, train_seed)
    paths = [p for p in (data.path or "").split("::") if p]
    if data.dataset == "csv":
        rows = [row for path in paths for row in read_csv_rows(path, data)]
    else:  # coco_json
        rows = [row for path in paths for row in read_albef_caption_rows(path, data.image_root)]
    return AnnotatedPretrainDataset(rows, data, augment, train_seed)
