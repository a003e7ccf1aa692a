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
    dataset = build_pretrain_dataset(DataConfig(dataset="webdataset", path=str(shard), image_size=16), augment=True)
    items = list(dataset)
    assert [item["caption"] for item in items] == ["red", "blue"]
    assert dataset.num_corrupt == 1
    assert items[1]["image"][2].float().mean() > 250 and items[0]["image_aug"].shape == (3, 16, 16)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=0)
    assert next(iter(loader))["image"].shape == (2, 3, 16, 16)


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
