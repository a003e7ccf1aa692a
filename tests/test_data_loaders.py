"""Real-data loaders on fixtures written to tmp_path: CSV, WebDataset, ALBEF JSON, CIFAR, folders."""

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainers.config import DataConfig
from trainers.data import (
    build_pretrain_dataset,
    build_task_sets,
    build_wordpiece_tokenizer,
    load_albef_nlvr_json,
    load_albef_retrieval_json,
    load_albef_ve_json,
    load_albef_vqa_json,
)
from trainers.data.pretrain import WebDatasetPretrain, shard_urls


def _png(path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    for name, colour in [("red.png", (255, 0, 0)), ("green.png", (0, 255, 0)), ("blue.png", (0, 0, 255))]:
        _png(root / name, colour)
    (root / "broken.png").write_bytes(b"this is not a png")
    return root


def _csv(tmp_path, rows, header="filepath\ttitle"):
    path = tmp_path / "pairs.tsv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_items_and_configurable_columns(tmp_path, images):
    path = _csv(tmp_path, ["red.png\ta red square", "green.png\ta green square"], header="img\tcap")
    data = DataConfig(dataset="csv", path=str(path), image_root=str(images), image_key="img", caption_key="cap",
                      image_size=32)
    dataset = build_pretrain_dataset(data, augment=True)
    item = dataset[1]
    assert item["caption"] == "a green square" and item["image"].shape == (3, 32, 32)
    assert item["image"][1].float().mean() > 250 and item["image"][0].float().mean() < 5
    assert item["image_aug"].shape == (3, 32, 32) and isinstance(item["caption_aug"], str)
    tokenizer = build_wordpiece_tokenizer(data)  # trained on the captions when there is no vocab_file
    assert tokenizer.unk_token_id not in tokenizer("a red square")["input_ids"]


def test_csv_wrong_column_names_the_file_and_columns(tmp_path, images):
    path = _csv(tmp_path, ["red.png\ta red square"])
    data = DataConfig(dataset="csv", path=str(path), image_root=str(images), caption_key="caption")
    with pytest.raises(ValueError, match=r"pairs.tsv: no column 'caption' \(data.caption_key\); columns are"):
        build_pretrain_dataset(data)


def test_csv_missing_and_unreadable_images_name_file_and_row(tmp_path, images):
    path = _csv(tmp_path, ["red.png\tok", "missing.png\tgone", "broken.png\tbad"])
    dataset = build_pretrain_dataset(DataConfig(dataset="csv", path=str(path), image_root=str(images)))
    assert dataset[0]["caption"] == "ok"
    with pytest.raises(ValueError, match=r"pairs.tsv:row 3: image file .*missing.png does not exist"):
        dataset[1]
    with pytest.raises(ValueError, match=r"pairs.tsv:row 4: cannot read image .*broken.png"):
        dataset[2]


def test_missing_data_file_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="path: .*nope.tsv does not exist"):
        DataConfig(dataset="csv", path=str(tmp_path / "nope.tsv"))


def _tar_member(tar, name, payload: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def test_webdataset_skips_and_counts_a_corrupt_image(tmp_path, images):
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for key, image, caption in [("a", "red.png", "red"), ("b", "broken.png", "broken"), ("c", "blue.png", "blue")]:
            _tar_member(tar, f"{key}.png", (images / image).read_bytes())
            _tar_member(tar, f"{key}.txt", caption.encode())
    data = DataConfig(dataset="webdataset", path=str(shard), image_size=16, max_skipped_fraction=0.5)
    dataset = build_pretrain_dataset(data, augment=True)
    items = list(dataset)  # no epoch length known: one pass
    assert sorted(item["caption"] for item in items) == ["blue", "red"]
    assert dataset.num_corrupt == 1
    blue = next(item for item in items if item["caption"] == "blue")
    assert blue["image"][2].float().mean() > 250 and items[0]["image_aug"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="shard-000.tar:b: 1 of 3 samples read were skipped.*max_skipped_fraction"):
        list(build_pretrain_dataset(data.model_copy(update={"max_skipped_fraction": 0.1})))


def _shards(folder, num_shards: int, per_shard: int, image_ext: str = "jpg", caption_ext: str = "txt") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(num_shards):
        with tarfile.open(folder / f"shard-{shard:03d}.tar", "w") as tar:
            for i in range(per_shard):
                payload = io.BytesIO()
                Image.new("RGB", (20, 20), (shard * 40, i * 10, 0)).save(payload, "PNG")
                _tar_member(tar, f"s{shard}_{i:03d}.{image_ext}", payload.getvalue())
                _tar_member(tar, f"s{shard}_{i:03d}.{caption_ext}", f"shard {shard} item {i}".encode())
    return str(folder / f"shard-{{000..{num_shards - 1:03d}}}.tar")


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_webdataset_epoch_is_split_disjointly_and_evenly_among_ranks_and_loader_workers(tmp_path, loader_workers):
    """Each of 2 ranks x L loader workers reads its own shards; every rank gets the same number of batches."""
    path = _shards(tmp_path / "shards", num_shards=4, per_shard=10, image_ext="image", caption_ext="caption")
    data = DataConfig(dataset="webdataset", path=path, image_key="image", caption_key="caption", image_size=16,
                      samples_per_epoch=30, num_loader_workers=loader_workers)
    captions_per_rank = []
    for rank in (0, 1):
        # what a 2-worker process group gives (read from torch.distributed when not given)
        dataset = WebDatasetPretrain(shard_urls(path), data, augment=False, batch_size=4, shuffle_seed=3,
                                     rank_and_world_size=(rank, 2))
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=loader_workers, drop_last=True,
                                             collate_fn=lambda items: [item["caption"] for item in items])
        batches = list(loader)
        assert len(batches) == len(loader)  # the loop sizes its schedule from len(loader)
        captions_per_rank.append([caption for batch in batches for caption in batch])
    # 30 samples over 2 ranks x L readers, in whole batches of 4: 15 -> 12 (L = 1), 7 -> 4 per reader (L = 2)
    assert len(captions_per_rank[0]) == len(captions_per_rank[1]) == {0: 12, 2: 8}[loader_workers]
    shards_per_rank = [{caption.split()[1] for caption in captions} for captions in captions_per_rank]
    assert not shards_per_rank[0] & shards_per_rank[1]
    assert all(len(set(captions)) == len(captions) for captions in captions_per_rank)


def test_webdataset_epoch_length_from_sizes_json_cycles_and_reshuffles(tmp_path):
    path = _shards(tmp_path / "shards", num_shards=2, per_shard=5)
    (tmp_path / "shards" / "sizes.json").write_text(json.dumps({"shard-000.tar": 5, "shard-001.tar": 5}))
    dataset = build_pretrain_dataset(DataConfig(dataset="webdataset", path=path, image_size=16, num_loader_workers=0))
    assert len(dataset) == 10
    first = [item["caption"] for item in dataset]
    dataset.set_epoch(1)
    second = [item["caption"] for item in dataset]
    assert sorted(first) == sorted(second) and first != second and len(set(first)) == 10
    short = build_pretrain_dataset(DataConfig(dataset="webdataset", path=path, image_size=16, num_loader_workers=0,
                                              samples_per_epoch=25))
    assert len([item for item in short]) == 25  # a stream cycles over its shards to fill the epoch


def test_webdataset_truncated_shard_is_skipped_and_counted(tmp_path):
    path = _shards(tmp_path / "shards", num_shards=2, per_shard=8)
    good = (tmp_path / "shards" / "shard-001.tar").read_bytes()
    (tmp_path / "shards" / "shard-001.tar").write_bytes(good[:10_000])  # inside a member's data
    dataset = build_pretrain_dataset(DataConfig(dataset="webdataset", path=path, image_size=16, num_loader_workers=0,
                                                max_skipped_fraction=0.5))
    captions = [item["caption"] for item in dataset]
    assert dataset.num_corrupt == 1 and 8 <= len(captions) < 16
    assert {caption.split()[1] for caption in captions} == {"0", "1"}


def test_webdataset_refuses_fewer_shards_than_readers_and_an_unknown_epoch(tmp_path):
    path = _shards(tmp_path / "shards", num_shards=2, per_shard=4)
    with pytest.raises(ValueError, match="2 shard.* cannot be split among 1 Ray Train worker.* x 4 loader"):
        build_pretrain_dataset(DataConfig(dataset="webdataset", path=path, samples_per_epoch=8, num_loader_workers=4))
    dataset = build_pretrain_dataset(DataConfig(dataset="webdataset", path=path))
    with pytest.raises(TypeError, match="data.samples_per_epoch: required"):
        len(dataset)


def test_coco_json_pretraining_and_retrieval(tmp_path, images):
    annotations = tmp_path / "coco_test.json"
    annotations.write_text(json.dumps([
        {"image": "red.png", "caption": ["a red thing", "something red"]},
        {"image": "blue.png", "caption": "a blue thing"},
    ]))
    dataset = build_pretrain_dataset(DataConfig(dataset="coco_json", path=str(annotations), image_root=str(images)))
    assert [dataset[i]["caption"] for i in range(len(dataset))] == ["a red thing", "something red", "a blue thing"]
    task = load_albef_retrieval_json(annotations, images, image_size=24)
    assert task.images.shape == (2, 3, 24, 24) and task.caption_to_image.tolist() == [0, 0, 1]
    annotations.write_text(json.dumps([{"image": "red.png"}]))
    with pytest.raises(ValueError, match="coco_test.json: entry 0 lacks caption"):
        load_albef_retrieval_json(annotations, images)


def test_albef_vqa_nlvr_ve(tmp_path, images):
    vqa = tmp_path / "vqa.json"
    vqa.write_text(json.dumps([
        {"image": "red.png", "question": "what colour?", "answer": ["red", "red", "pink"]},
        {"image": "blue.png", "question": "what colour?", "answer": ["blue"]},
    ]))
    task = load_albef_vqa_json(vqa, vqa, images, image_size=16)
    assert task.answer_vocab == ["blue", "red"] and task.train.answers.tolist() == [1, 0]
    nlvr = tmp_path / "nlvr.json"
    nlvr.write_text(json.dumps([{"images": ["red.png", "blue.png"], "sentence": "left is red", "label": "True"},
                                {"images": ["blue.png", "red.png"], "sentence": "left is red", "label": "False"}]))
    task = load_albef_nlvr_json(nlvr, nlvr, images, image_size=16)
    assert task.test.labels.tolist() == [1, 0] and task.test.images_right[0][2].float().mean() > 250
    ve = tmp_path / "ve.json"
    ve.write_text(json.dumps([{"image": "red", "sentence": "it is red", "label": "entailment"},
                              {"image": "green", "sentence": "it is blue", "label": "contradiction"}]))
    with pytest.raises(ValueError, match=r"ve.json:entry 0: image file .*red.jpg does not exist"):
        load_albef_ve_json(ve, ve, images, image_size=16)  # SNLI-VE ids name Flickr .jpg files
    _png(images / "red.jpg", (255, 0, 0))
    _png(images / "green.jpg", (0, 255, 0))
    task = load_albef_ve_json(ve, ve, images, image_size=16)
    assert task.train.labels.tolist() == [0, 2] and task.train.images[1][1].float().mean() > 240


def _write_cifar(root, kind="cifar10", num_train=20, num_test=20, names=None):
    """torchvision's CIFAR pickle layout; image of label k is grey level 2 * k (plus noise)."""
    folder = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    num_classes = 10 if kind == "cifar10" else 100
    label_key = "labels" if kind == "cifar10" else "fine_labels"

    def batch(count, offset):
        labels = [(i + offset) % num_classes for i in range(count)]
        data = np.stack([np.full(3072, 2 * label, dtype=np.uint8) for label in labels])
        return {"data": data + rng.integers(0, 2, data.shape, dtype=np.uint8), label_key: labels}

    if kind == "cifar10":
        for i in range(1, 6):
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(num_train // 5, i)))
        (folder / "test_batch").write_bytes(pickle.dumps(batch(num_test, 0)))
        names = names or ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    else:
        (folder / "train").write_bytes(pickle.dumps(batch(num_train, 1)))
        (folder / "test").write_bytes(pickle.dumps(batch(num_test, 0)))
        (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names}))


def _real(tmp_path, **fields) -> DataConfig:
    """A real-data configuration (a one-row TSV to train on) with the evaluation sets in `fields`."""
    return DataConfig(dataset="csv", path=str(_csv(tmp_path, ["red.png\tx"])), **fields)


def test_cifar_zeroshot_uses_clip_class_names_and_templates_and_splits_test_and_validation(tmp_path):
    _write_cifar(tmp_path / "cifar", num_test=40)
    data = _real(tmp_path, image_size=32, zeroshot=[f"cifar10:{tmp_path / 'cifar'}"])
    sets = build_task_sets(data)
    (test,), (validation,) = sets.zeroshot, sets.validation.zeroshot
    assert test.classnames[0] == "airplane" and len(test.templates) == 18 and "a photo of the big {}." in test.templates
    # the full test set (no eval_limit): 40 images, per class 2 to test and 2 to validation
    assert len(test.labels) == len(validation.labels) == 20
    assert sorted(test.labels.tolist()) == sorted(validation.labels.tolist()) == sorted(list(range(10)) * 2)
    grey = test.images.float().mean(dim=(1, 2, 3))
    assert torch.allclose(grey, 2 * test.labels.float(), atol=1)  # labels stay with their images
    probe, validation_probe = sets.probes[0], sets.validation.probes[0]
    assert len(probe.train_labels) == 20 and validation_probe.train_images is probe.train_images
    limited = build_task_sets(data.model_copy(update={"eval_limit": 20}))
    assert len(limited.zeroshot[0].labels) + len(limited.validation.zeroshot[0].labels) == 20

    # CIFAR-100's stored names (aquarium_fish) become CLIP's cleaned names, matched by name
    raw = list(json.loads((Path(__file__).parents[1] / "trainers/data/cifar_zeroshot_metadata.json")
                                       .read_text())["cifar100"]["classnames"])
    _write_cifar(tmp_path / "c100", kind="cifar100", num_test=200, names=raw)
    c100 = build_task_sets(_real(tmp_path, image_size=32, zeroshot=[f"cifar100:{tmp_path / 'c100'}"])).zeroshot[0]
    assert c100.classnames[1] == "aquarium fish" and "aquarium_fish" not in c100.classnames
    _write_cifar(tmp_path / "wrong", names=["plane", *raw[1:10]])
    with pytest.raises(ValueError, match=r"data.zeroshot\[0\]: cifar10:.*plane.*do not match cifar10's 10 classes"):
        build_task_sets(_real(tmp_path, zeroshot=[f"cifar10:{tmp_path / 'wrong'}"]))


def _digit_folder(root, class_folders):
    """Folder-per-class images whose grey level encodes the class (10 * rank in `class_folders`)."""
    for rank, name in enumerate(class_folders):
        for i in range(4):
            _png(root / name / f"{i}.png", (10 * rank,) * 3)


def test_folder_zeroshot_matches_classes_by_name_not_position(tmp_path):
    """Class folders sort alphabetically (eight, five, four, ...); the names file lists zero..nine."""
    numbers = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    _digit_folder(tmp_path / "digits", numbers)
    (tmp_path / "names.txt").write_text("".join(f"{name}\tthe number {name}\n" for name in numbers))
    data = _real(tmp_path, image_size=16, zeroshot=[f"folder:{tmp_path / 'digits'}::{tmp_path / 'names.txt'}"])
    sets = build_task_sets(data)
    test, validation = sets.zeroshot[0], sets.validation.zeroshot[0]
    assert test.name == "digits" and test.classnames[3] == "the number three"
    for task in (test, validation):
        grey = task.images[:, 0].float().mean(dim=(1, 2))
        assert torch.allclose(grey, 10 * task.labels.float(), atol=1)  # the label is the folder's class
        assert sorted(task.labels.tolist()) == sorted(list(range(10)) * 2)
    assert sets.validation.probes == [] and torch.equal(sets.probes[0].train_images, validation.images)

    (tmp_path / "wrong.txt").write_text("zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nten\n")
    with pytest.raises(ValueError, match="folders without a class: nine; classes without a folder: ten"):
        build_task_sets(_real(tmp_path, zeroshot=[f"folder:{tmp_path / 'digits'}::{tmp_path / 'wrong.txt'}"]))


def test_imagenet_folder_matches_synset_ids(tmp_path):
    from trainers.data.real_tasks import imagenet_synsets

    synsets = imagenet_synsets()
    for position in (0, 1, 999):
        for i in range(2):
            _png(tmp_path / "val" / synsets[position] / f"{i}.png", (position // 4,) * 3)
    with pytest.raises(ValueError, match="classes without a folder: n01484850"):
        build_task_sets(_real(tmp_path, image_size=16, zeroshot=[f"imagenet:{tmp_path / 'val'}"]))


def test_zeroshot_bad_entries(tmp_path):
    data = DataConfig(dataset="csv", path=str(_csv(tmp_path, [])), zeroshot=[f"cifar10:{tmp_path}"])
    with pytest.raises(ValueError, match="is not a cifar10 root"):
        build_task_sets(data)
    data = DataConfig(dataset="csv", path=str(_csv(tmp_path, [])), zeroshot=[f"mnist:{tmp_path}"])
    with pytest.raises(ValueError, match="unknown kind 'mnist'"):
        build_task_sets(data)


def test_karpathy_retrieval_json_splits_test_and_val_and_resolves_against_its_folder(tmp_path, images):
    document = {"images": [
        {"filepath": "images", "filename": "red.png", "split": "test", "sentences": [{"raw": "red"}, {"raw": "rot"}]},
        {"filepath": "images", "filename": "green.png", "split": "val", "sentences": [{"raw": "green"}]},
        {"filepath": "images", "filename": "blue.png", "split": "train", "sentences": [{"raw": "blue"}]},
        {"filepath": "images", "filename": "blue.png", "split": "test", "sentences": [{"raw": "blau"}]},
    ]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(document))
    annotations = {"retrieval": str(tmp_path / "dataset_coco.json")}
    sets = build_task_sets(_real(tmp_path, image_size=16, annotations=annotations))
    assert sets.retrieval.captions == ["red", "rot", "blau"] and sets.retrieval.caption_to_image.tolist() == [0, 0, 1]
    assert sets.validation.retrieval.captions == ["green"]
    assert sets.validation.retrieval.images[0, 1].float().mean() > 250


def test_config_annotations_reach_the_task_sets(tmp_path, images):
    retrieval = tmp_path / "coco_test.json"
    retrieval.write_text(json.dumps([{"image": "red.png", "caption": ["a red thing"]},
                                     {"image": "blue.png", "caption": ["a blue thing"]}]))
    nlvr = tmp_path / "nlvr.json"
    nlvr.write_text(json.dumps([{"images": ["red.png", "blue.png"], "sentence": "left is red", "label": "True"}]))
    data = DataConfig(dataset="coco_json", path=str(retrieval), image_root=str(images), image_size=16,
                      annotations={"retrieval": str(retrieval), "nlvr_train": str(nlvr), "nlvr_test": str(nlvr)})
    tasks = build_task_sets(data)
    # no split in the file and no annotations.retrieval_val: even entries test, odd entries validation
    assert tasks.retrieval.captions == ["a red thing"] and tasks.validation.retrieval.captions == ["a blue thing"]
    assert tasks.nlvr.train.labels.tolist() == [1] and tasks.vqa is None
    with pytest.raises(ValueError, match="annotations.ve_test: .*missing.json does not exist"):
        DataConfig(annotations={"ve_test": str(tmp_path / "missing.json")})
