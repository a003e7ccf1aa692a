"""Real-data loaders on fixtures written to tmp_path: CSV, WebDataset, ALBEF JSON, CIFAR, folders."""

import io
import json
import pickle
import tarfile

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


def _write_cifar10(root, num_train=20, num_test=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(count, offset):
        labels = [(i + offset) % 10 for i in range(count)]
        data = np.stack([np.full(3072, 20 * label, dtype=np.uint8) for label in labels])
        return {"data": data + rng.integers(0, 3, data.shape, dtype=np.uint8), "labels": labels}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(num_train // 5, i)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(num_test, 0)))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def test_zeroshot_from_cifar10_root_and_a_folder(tmp_path, images):
    _write_cifar10(tmp_path / "cifar")
    for class_name, colour in [("cats", (200, 0, 0)), ("dogs", (0, 0, 200))]:
        for i in range(3):
            _png(tmp_path / "folder" / class_name / f"{i}.png", colour)
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    entries = [f"cifar10:{tmp_path / 'cifar'}", f"folder:{tmp_path / 'folder'}::{tmp_path / 'names.txt'}"]
    data = DataConfig(dataset="csv", path=str(_csv(tmp_path, ["red.png\tx"])), image_size=32, eval_size=16,
                      zeroshot=entries)
    sets = build_task_sets(data)
    cifar, folder = sets.zeroshot
    assert cifar.name == "cifar10" and cifar.classnames[0] == "airplane" and cifar.images.shape == (10, 3, 32, 32)
    assert cifar.labels.tolist() == list(range(10)) and all("{}" in t for t in cifar.templates)
    assert cifar.images[3].float().mean() == pytest.approx(60, abs=2)  # label 3 was drawn as grey level 60
    assert folder.classnames == ["cat", "dog"] and folder.labels.tolist() == [0, 0, 0, 1, 1, 1]
    probes = {p.name: p for p in sets.probes}
    assert len(probes["cifar10"].train_labels) == 16 and probes["cifar10"].train_captions == []
    assert sets.retrieval is None and sets.vqa is None


def test_zeroshot_bad_entries(tmp_path):
    data = DataConfig(dataset="csv", path=str(_csv(tmp_path, [])), zeroshot=[f"cifar10:{tmp_path}"])
    with pytest.raises(ValueError, match="is not a cifar10 root"):
        build_task_sets(data)
    data = DataConfig(dataset="csv", path=str(_csv(tmp_path, [])), zeroshot=[f"mnist:{tmp_path}"])
    with pytest.raises(ValueError, match="unknown kind 'mnist'"):
        build_task_sets(data)


def test_config_annotations_reach_the_task_sets(tmp_path, images):
    retrieval = tmp_path / "coco_test.json"
    retrieval.write_text(json.dumps([{"image": "red.png", "caption": ["a red thing"]},
                                     {"image": "blue.png", "caption": ["a blue thing"]}]))
    nlvr = tmp_path / "nlvr.json"
    nlvr.write_text(json.dumps([{"images": ["red.png", "blue.png"], "sentence": "left is red", "label": "True"}]))
    data = DataConfig(dataset="coco_json", path=str(retrieval), image_root=str(images), image_size=16,
                      annotations={"retrieval": str(retrieval), "nlvr_train": str(nlvr), "nlvr_test": str(nlvr)})
    tasks = build_task_sets(data)
    assert tasks.retrieval.caption_to_image.tolist() == [0, 1]
    assert tasks.nlvr.train.labels.tolist() == [1] and tasks.vqa is None
    with pytest.raises(ValueError, match="annotations.ve_test: .*missing.json does not exist"):
        DataConfig(annotations={"ve_test": str(tmp_path / "missing.json")})
