"""The synthetic world: determinism, split disjointness, the information-gap property, caching."""

import hashlib

import numpy as np
import pytest
import torch

from trainers.config import DataConfig, RunConfig
from trainers.data import build_pretrain_dataset
from trainers.data.augment import ImageAugmentation, mirror_caption, view_seed
from trainers.data.captions import scene_captions
from trainers.data.render import render_scenes
from trainers.data.synthetic import world_split
from trainers.data.world import (
    BACKGROUNDS,
    CAPTION_MENTION_PROBABILITY,
    COLOURS,
    MATERIALS,
    OWNERS,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLIT_IDS,
    SYNONYMS,
    TEXTURES,
    sample_scenes,
)


def _config(tmp_path, **overrides) -> DataConfig:
    return DataConfig(cache_dir=str(tmp_path / "cache"), train_size=96, eval_size=32, **overrides)


def test_same_seed_and_config_give_identical_bytes(tmp_path):
    first = world_split(_config(tmp_path / "a"), "train", 96)
    second = world_split(_config(tmp_path / "b"), "train", 96)  # separate caches: rendered twice
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))
    assert first.captions == second.captions
    other_seed = world_split(_config(tmp_path / "c", world_seed=1), "train", 96)
    assert not np.array_equal(np.asarray(first.images), np.asarray(other_seed.images))


def test_a_sample_does_not_depend_on_the_split_size():
    small = sample_scenes(0, "train", 0, 10, 0.5, 64)
    large = sample_scenes(0, "train", 0, 50, 0.5, 64)
    assert np.array_equal(render_scenes(small, 64), render_scenes(large, 64)[:10])


def test_splits_share_no_image_or_caption(tmp_path):
    data = _config(tmp_path)
    seen: dict[str, str] = {}
    for split in SPLIT_IDS:  # pre-training, task training, validation and test
        part = world_split(data, split, 96)
        for image, caption in zip(part.images, part.captions, strict=True):
            digest = hashlib.sha256(np.asarray(image).tobytes()).hexdigest()
            assert seen.setdefault(digest, split) == split
            assert seen.setdefault(caption + digest, split) == split


def test_image_only_attributes_never_appear_in_captions():
    scenes = sample_scenes(3, "train", 0, 500, 1.0, 64)
    words = {w.strip(",.;'") for c in scene_captions(scenes) for w in c.split()}
    assert not words & (set(TEXTURES) | set(BACKGROUNDS))
    # and changing them leaves every caption unchanged
    scenes.texture[:] = (scenes.texture + 1) % len(TEXTURES)
    scenes.background[:] = (scenes.background + 1) % len(BACKGROUNDS)
    assert scene_captions(scenes) == scene_captions(sample_scenes(3, "train", 0, 500, 1.0, 64))


def test_text_only_facts_never_change_the_pixels_but_do_change_captions():
    scenes = sample_scenes(5, "task_train", 0, 200, 1.0, 64)
    before, captions = render_scenes(scenes, 64), scene_captions(scenes)
    scenes.owner[:] = (scenes.owner + 1) % len(OWNERS)
    scenes.material[:] = (scenes.material + 2) % len(MATERIALS)
    assert np.array_equal(before, render_scenes(scenes, 64))
    changed = scene_captions(scenes)
    assert all(a != b for a, b in zip(captions, changed, strict=True))
    # a visual change does reach the pixels (the comparison above can fail)
    scenes.texture[:, -1] = (scenes.texture[:, -1] + 1) % len(TEXTURES)
    assert not np.array_equal(before, render_scenes(scenes, 64))


@pytest.mark.parametrize("info_gap", [0.0, 1.0])
def test_info_gap_controls_how_much_modality_specific_labels_follow_the_class(info_gap):
    attributes = sample_scenes(0, "train", 0, 2000, info_gap, 64).attributes()
    label = attributes["class"]
    colour_follows = np.mean(attributes["colour"] == label % len(COLOURS))
    owner_follows = np.mean(attributes["owner"] == (label // 2) % len(OWNERS))
    if info_gap == 0.0:
        assert colour_follows == 1.0 and owner_follows == 1.0
    else:  # independent draws agree with the tied value only by chance (1/8 and 1/4)
        assert 0.08 < colour_follows < 0.18 and 0.18 < owner_follows < 0.32


def test_world_has_enough_classes_and_every_shape_occurs():
    scenes = sample_scenes(0, "train", 0, 400, 0.5, 64)
    assert len(SHAPES) >= 6
    assert set(np.unique(scenes.label)) == set(range(len(SHAPES)))
    assert set(np.unique(scenes.num_objects)) == {1}  # no distractors by default
    crowded = sample_scenes(0, "train", 0, 400, 0.5, 64, distractors=2)
    assert set(np.unique(crowded.num_objects)) == {1, 2, 3}
    # distractors are smaller than the main object, so "main" stays well defined
    present = crowded.shape[:, :2] >= 0
    assert (crowded.radius[:, :2][present] < np.repeat(crowded.radius[:, 2:], 2, axis=1)[present]).all()
    with pytest.raises(ValueError, match="distractors"):
        sample_scenes(0, "train", 0, 4, 0.5, 64, distractors=3)


def test_cache_is_written_once_and_reused(tmp_path):
    data = _config(tmp_path)
    world_split(data, "train", 96)
    files = sorted((tmp_path / "cache" / "synthetic").iterdir())
    assert [f.suffix for f in files] == [".json", ".npy"]
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = world_split(data, "train", 96)
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert isinstance(again.images, np.memmap)


def test_pretrain_items_and_deterministic_views(tmp_path):
    dataset = build_pretrain_dataset(_config(tmp_path), augment=True)
    assert len(dataset) == 96
    item = dataset[7]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 64, 64)
    assert item["image_aug"].shape == (3, 64, 64) and item["index"] == 7
    assert isinstance(item["caption"], str) and isinstance(item["caption_aug"], str)
    again = build_pretrain_dataset(_config(tmp_path), augment=True)[7]
    assert torch.equal(item["image_aug"], again["image_aug"]) and item["caption_aug"] == again["caption_aug"]
    dataset.set_epoch(1)  # a new epoch draws new views of the same sample
    assert not torch.equal(dataset[7]["image_aug"], item["image_aug"])
    assert torch.equal(dataset[7]["image"], item["image"])
    plain = build_pretrain_dataset(_config(tmp_path), split="validation")[0]
    assert set(plain) == {"image", "caption", "index"}


def test_views_follow_the_training_seed_as_well_as_the_sample(tmp_path):
    data = _config(tmp_path)
    first = build_pretrain_dataset(data, augment=True, train_seed=0)
    same = build_pretrain_dataset(data, augment=True, train_seed=0)
    other = build_pretrain_dataset(data, augment=True, train_seed=1)
    assert all(torch.equal(first[i]["image_aug"], same[i]["image_aug"]) for i in range(8))
    differing = sum(not torch.equal(first[i]["image_aug"], other[i]["image_aug"]) for i in range(8))
    assert differing >= 6  # two seeds may draw the same whole-image view of a sample only by chance
    assert all(torch.equal(first[i]["image"], other[i]["image"]) for i in range(8))  # the world is the same


def test_mirror_caption_swaps_left_and_right_words_only():
    assert mirror_caption("a red ring in the top left, next to a star on the right") == (
        "a red ring in the top right, next to a star on the left"
    )
    assert mirror_caption("leftover righteous") == "leftover righteous"


def test_a_flipped_view_has_the_mirrored_caption(tmp_path):
    data = DataConfig(cache_dir=str(tmp_path / "cache"), train_size=400, eval_size=32)
    dataset = build_pretrain_dataset(data, augment=True)
    augmentation = ImageAugmentation(data.image_size)
    mirrored = 0
    for index in range(len(dataset)):
        item = dataset[index]
        _, flipped = augmentation.view(item["image"], view_seed(data.world_seed, index, 0, 0))
        expected = mirror_caption(item["caption"]) if flipped else item["caption"]
        # EDA only swaps, deletes or replaces with synonyms (none for left/right): a side word of the
        # view's caption comes from the expected caption, never from the other side
        for side in ("left", "right"):
            assert item["caption_aug"].split().count(side) <= expected.split().count(side)
        mirrored += flipped and "left" in item["caption"].split() and "right" in item["caption_aug"].split()
    assert mirrored >= 5


def test_world_seed_may_follow_the_training_seed():
    follows = RunConfig.model_validate({"data": {"world_seed_follows_train_seed": True}, "train": {"seed": 3}})
    assert follows.data.world_seed == 3
    # a study sets train.seed on the dumped base: the world follows it again
    dumped = follows.model_dump()
    dumped["train"]["seed"] = 5
    assert RunConfig.model_validate(dumped).data.world_seed == 5
    fixed = RunConfig.model_validate({"data": {"world_seed": 2}, "train": {"seed": 3}})
    assert fixed.data.world_seed == 2


def test_captions_always_name_the_shape_and_state_other_shared_facts_only_sometimes():
    """What makes shape necessary: pairs that colour, size and position would tell apart without shape
    are rare, because a caption states each of them only sometimes, and the shape always."""
    scenes = sample_scenes(0, "train", 0, 2000, 0.5, 64)
    captions = scene_captions(scenes)
    for i, caption in enumerate(captions[:300]):
        shape = SHAPES[scenes.label[i]]
        main_part = caption.split(" next to ")[0].split(" near ")[0]
        main_words = {w.strip(",;") for w in main_part.replace("'s ", " ").split()}
        assert shape in main_words and not main_words & set(SYNONYMS[shape]), caption  # by its canonical name
    words = [set(c.replace(",", " ").replace(";", " ").split()) for c in captions]
    stated_colour = np.mean([COLOURS[scenes.colour[i, -1]] in w for i, w in enumerate(words)])
    assert 0.0 < stated_colour <= CAPTION_MENTION_PROBABILITY["colour"] + 0.2  # + distractor clauses' colours
    all_three = np.mean([
        COLOURS[scenes.colour[i, -1]] in w and bool({SIZES[scenes.size[i]], *SYNONYMS[SIZES[scenes.size[i]]]} & w)
        and POSITIONS[scenes.position[i]] in captions[i]
        for i, w in enumerate(words)
    ])
    assert all_three < 0.2
