"""The synthetic visual-entailment labels agree with the scenes: every entailment is true of its image and
every contradiction false (a count contradiction once stated the true number for a third of the scenes)."""

from __future__ import annotations

import re

from trainers.config import DataConfig
from trainers.data.synthetic import world_split
from trainers.data.synthetic_tasks import _images, _objects, ve_split
from trainers.data.world import COLOURS, COUNT_WORDS, SHAPES

OBJECT = re.compile(r"there is a (\w+) (\w+)\.")
COUNT = re.compile(r"the number of objects is (\w+)\.")


def _truth(hypothesis: str, scenes, i: int) -> bool | None:
    """True/False for a statement the image decides; None for one it cannot (owner, material)."""
    if match := OBJECT.fullmatch(hypothesis):
        colour, shape = COLOURS.index(match[1]), SHAPES.index(match[2])
        return (colour, shape) in _objects(scenes, i)
    if match := COUNT.fullmatch(hypothesis):
        return COUNT_WORDS.index(match[1]) + 1 == int(scenes.num_objects[i])
    return None


def test_every_contradiction_is_false_and_every_entailment_true():
    data = DataConfig(eval_size=600, image_size=16, distractors=2)
    split = world_split(data, "test", data.eval_size)
    ve = ve_split(data, "test", split, _images(split))
    counts = {0: 0, 2: 0}
    count_statements = 0
    for i, (hypothesis, label) in enumerate(zip(ve.hypotheses, ve.labels.tolist(), strict=True)):
        truth = _truth(hypothesis, split.scenes, i)
        if label == 1:
            assert truth is None, (i, hypothesis)  # neutral: the image cannot decide it
            continue
        assert truth is (label == 0), (i, hypothesis, label, int(split.scenes.num_objects[i]))
        counts[label] += 1
        count_statements += COUNT.fullmatch(hypothesis) is not None
    # both kinds of decidable statement and both labels occur, so the check above checked something
    assert min(counts.values()) > 50 and count_statements > 50, (counts, count_statements)
