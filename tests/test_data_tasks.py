"""Synthetic downstream task sets, augmentation parity with torchvision v2, tokenizers."""

import random

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from trainers.config import DataConfig
from trainers.data import VE_LABELS, build_task_sets, build_wordpiece_tokenizer, clip_tokenizer
from trainers.data.augment import apply_view, draw_view_params, eda_augment
from trainers.data.world import COLOURS, SHAPES, SYNONYMS


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    data = DataConfig(cache_dir=str(tmp_path_factory.mktemp("cache")), eval_size=64)
    return data, build_task_sets(data)


def test_zeroshot_and_retrieval(tasks):
    _, sets = tasks
    zeroshot, colours = sets.zeroshot
    assert zeroshot.classnames == list(SHAPES) and all("{}" in t for t in zeroshot.templates)
    assert colours.classnames == list(COLOURS) and torch.equal(colours.images, zeroshot.images)
    assert zeroshot.images.shape == (64, 3, 64, 64) and zeroshot.images.dtype == torch.uint8
    assert len(set(zeroshot.labels.tolist())) > 4
    retrieval = sets.retrieval
    assert len(retrieval.captions) == 2 * len(retrieval.images) == len(retrieval.caption_to_image)
    # paraphrases of one image differ in wording
    first, second = retrieval.captions[0], retrieval.captions[len(retrieval.images)]
    assert retrieval.caption_to_image[len(retrieval.images)] == 0 and first != second


def test_probes_cover_shared_image_only_and_text_only_targets(tasks):
    _, sets = tasks
    probes = {p.name: p for p in sets.probes}
    assert {"class", "image_only", "text_only"} <= set(probes)
    assert {p.kind for p in sets.probes} == {"shared", "image_only", "text_only"}
    for probe in sets.probes:
        assert len(probe.train_images) == len(probe.train_captions) == len(probe.train_labels) == 64
        assert int(probe.train_labels.max()) < probe.num_classes
    # probe training and test images come from different splits
    assert not torch.equal(probes["class"].train_images, probes["class"].test_images)


def test_validation_sets_score_another_split_and_keep_the_training_parts(tasks):
    _, sets = tasks
    validation = sets.validation
    assert validation is not None and validation.validation is None
    assert [t.name for t in validation.zeroshot] == [t.name for t in sets.zeroshot]
    test_images, validation_images = sets.zeroshot[0].images, validation.zeroshot[0].images
    assert validation_images.shape == test_images.shape and not torch.equal(validation_images, test_images)
    # every task of a split shares its one image tensor, so evaluation encodes it once
    assert validation.retrieval.images is validation_images and validation.probes[0].test_images is validation_images
    assert validation.retrieval.captions != sets.retrieval.captions
    for test_probe, validation_probe in zip(sets.probes, validation.probes, strict=True):
        assert validation_probe.name == test_probe.name
        assert validation_probe.train_images is test_probe.train_images
        assert validation_probe.train_captions == test_probe.train_captions
        assert torch.equal(validation_probe.train_labels, test_probe.train_labels)
        assert not torch.equal(validation_probe.test_images, test_probe.train_images)
    for name in ("vqa", "nlvr", "ve"):
        assert getattr(validation, name).train is getattr(sets, name).train
    assert validation.vqa.test.questions != sets.vqa.test.questions
    assert validation.ve.test.images is validation_images


def test_vqa_nlvr_ve_are_well_formed_and_answer_from_the_scene(tasks):
    _, sets = tasks
    vqa = sets.vqa
    for question, answer in zip(vqa.test.questions, vqa.test.answers, strict=True):
        if question.startswith("how many"):
            assert vqa.answer_vocab[answer] in ("one", "two", "three")
        if question.startswith("what shape"):
            assert vqa.answer_vocab[answer] in SHAPES
    nlvr = sets.nlvr
    assert nlvr.train.images_left.shape == nlvr.train.images_right.shape
    assert 0.2 < nlvr.train.labels.float().mean() < 0.8
    ve = sets.ve
    assert set(ve.test.labels.tolist()) == {0, 1, 2} and len(VE_LABELS) == 3
    # neutral hypotheses speak only of text-only facts (owner, material)
    for hypothesis, label in zip(ve.test.hypotheses, ve.test.labels, strict=True):
        assert (label == 1) == ("belongs to" in hypothesis or "made of" in hypothesis)


def test_task_sets_are_deterministic(tasks):
    data, sets = tasks
    again = build_task_sets(data)
    assert again.vqa.test.questions == sets.vqa.test.questions
    assert torch.equal(again.nlvr.test.labels, sets.nlvr.test.labels)
    assert again.ve.train.hypotheses == sets.ve.train.hypotheses


def test_image_view_matches_torchvision_v2_kernels():
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    for seed in range(20):
        params = draw_view_params(random.Random(seed), 40, 48)
        ours = torch.from_numpy(apply_view(image.numpy(), params, 32))
        reference = F.resized_crop(image, params.top, params.left, params.height, params.width, [32, 32],
                                   interpolation=InterpolationMode.NEAREST)
        if params.flip:
            reference = F.horizontal_flip(reference)
        reference = F.adjust_brightness(reference, params.brightness)
        reference = F.adjust_contrast(reference, params.contrast)
        reference = F.adjust_saturation(reference, params.saturation)
        # float32 summation order differs by at most one grey level
        assert (ours.int() - reference.int()).abs().max() <= 1


def test_eda_is_seeded_and_uses_the_synonym_table():
    caption = "a large red circle in the middle owned by bob"
    assert eda_augment(caption, 3) == eda_augment(caption, 3)
    outputs = {eda_augment(caption, seed) for seed in range(200)}
    assert len(outputs) > 20
    words = {w for out in outputs for w in out.split()}
    assert words & set(SYNONYMS["large"]) and words & set(SYNONYMS["circle"])
    assert words <= set(caption.split()) | {w for ws in SYNONYMS.values() for w in ws}


def test_wordpiece_covers_every_world_text_and_has_bert_specials(tasks):
    data, sets = tasks
    tokenizer = build_wordpiece_tokenizer(data)
    # a token missing from the vocabulary converts to [UNK]'s id: each special must have an id of its own
    specials = {token: tokenizer.convert_tokens_to_ids(token) for token in ("[CLS]", "[SEP]", "[PAD]", "[MASK]")}
    assert tokenizer.convert_tokens_to_ids("[UNK]") == tokenizer.unk_token_id
    assert tokenizer.unk_token_id not in specials.values() and len(set(specials.values())) == len(specials)
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id) == (
        specials["[CLS]"], specials["[SEP]"], specials["[PAD]"], specials["[MASK]"])
    texts = (sets.retrieval.captions + sets.vqa.train.questions + sets.nlvr.train.statements
             + sets.ve.train.hypotheses + [t.format(c) for t in sets.zeroshot[0].templates for c in SHAPES])
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    assert not (encoded["input_ids"] == tokenizer.unk_token_id).any()
    assert (encoded["input_ids"][:, 0] == tokenizer.cls_token_id).all()
    # words outside the grammar fall back to characters, not [UNK]
    assert tokenizer.unk_token_id not in tokenizer("zebra")["input_ids"]


def test_wordpiece_from_vocab_file(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "##s"]))
    data = DataConfig(dataset="csv", path=str(vocab), vocab_file=str(vocab))
    tokenizer = build_wordpiece_tokenizer(data)
    assert tokenizer.convert_ids_to_tokens(tokenizer("a red circles")["input_ids"]) == [
        "[CLS]", "a", "red", "circle", "##s", "[SEP]"]
    vocab.write_text("a\nred\n")
    with pytest.raises(ValueError, match="lacks the special tokens"):
        build_wordpiece_tokenizer(data)


def test_clip_tokenizer_pads_to_context_length():
    tokens = clip_tokenizer(context_length=24)(["a red circle", "a blue square in the top left"])
    assert tokens.shape == (2, 24) and tokens.dtype == torch.long
    assert np.count_nonzero(tokens[0].numpy()) == 5  # start, three words, end
