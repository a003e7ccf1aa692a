"""Captions from the world's small grammar.

A caption states the main object's shared facts (size, colour, shape, position) and its text-only
facts (owner, material), sometimes a distractor; never a texture or a background. Size and a few
other words may be synonyms; the shape never is. Which template,
synonyms and clause a caption uses depends on (caption seed, paraphrase index) only, so paraphrase
k of a scene is reproducible and different paraphrases use different templates.
"""

from __future__ import annotations

import random

from trainers.data.world import (
    CAPTION_MENTION_PROBABILITY,
    CAPTION_TEMPLATES,
    COLOURS,
    COUNT_WORDS,
    DISTRACTOR_CLAUSES,
    MATERIALS,
    OWNERS,
    POSITIONS,
    SHAPES,
    SIZES,
    SYNONYMS,
    Scenes,
)

SYNONYM_PROBABILITY = 0.2


def _word(word: str, rng: random.Random) -> str:
    options = SYNONYMS.get(word)
    if options and rng.random() < SYNONYM_PROBABILITY:
        return rng.choice(options)
    return word


def scene_caption(scenes: Scenes, i: int, paraphrase: int = 0) -> str:
    rng = random.Random(int(scenes.caption_seed[i]) * 7919 + paraphrase)
    # paraphrase k shifts the template, so the paraphrases of one scene differ in phrasing
    template = CAPTION_TEMPLATES[(int(scenes.caption_seed[i]) + paraphrase) % len(CAPTION_TEMPLATES)]
    words = []
    if rng.random() < CAPTION_MENTION_PROBABILITY["size"]:
        words.append(_word(SIZES[scenes.size[i]], rng))
    if rng.random() < CAPTION_MENTION_PROBABILITY["colour"]:
        words.append(COLOURS[scenes.colour[i, -1]])
    # The shape is always its canonical word. With a synonym in 20% of captions ("disc" for circle), a text
    # tower trained from scratch at a low rate embeds the two words apart for hundreds of steps, so a fifth
    # of the shape targets were noise to the image tower: its shape probe at information gap 1 rose from
    # 0.43-0.71 to 0.75-0.77 without them (seeds 6-9, info_gap.yaml's trial). EDA's views still use them.
    words.append(SHAPES[scenes.shape[i, -1]])
    where = f" {POSITIONS[scenes.position[i]]}" if rng.random() < CAPTION_MENTION_PROBABILITY["position"] else ""
    caption = template.format(thing=" ".join(words), where=where, owner=OWNERS[scenes.owner[i]],
                              material=MATERIALS[scenes.material[i]])
    caption = caption.replace("photo", _word("photo", rng)).replace("sits", _word("sits", rng))
    return caption + _distractor_clause(scenes, i, rng)


def _distractor_clause(scenes: Scenes, i: int, rng: random.Random) -> str:
    present = [slot for slot in range(scenes.shape.shape[1] - 1) if scenes.shape[i, slot] >= 0]
    if not present or rng.random() < 0.4:
        return ""
    clause = rng.choice(DISTRACTOR_CLAUSES)
    slot = rng.choice(present)
    return clause.format(
        colour=COLOURS[scenes.colour[i, slot]], shape=SHAPES[scenes.shape[i, slot]],
        count=COUNT_WORDS[int(scenes.num_objects[i]) - 1],
    )


def scene_captions(scenes: Scenes, paraphrase: int = 0) -> list[str]:
    return [scene_caption(scenes, i, paraphrase) for i in range(len(scenes))]


def grammar_words() -> set[str]:
    """Every word a world caption, question or hypothesis can contain (for a WordPiece vocabulary)."""
    from trainers.data.synthetic_tasks import TASK_PHRASES

    texts = [*CAPTION_TEMPLATES, *DISTRACTOR_CLAUSES, *TASK_PHRASES, *SHAPES, *COLOURS, *SIZES, *POSITIONS,
             *OWNERS, *MATERIALS, *COUNT_WORDS, *(w for ws in SYNONYMS.values() for w in ws)]
    words: set[str] = set()
    for text in texts:
        cleaned = "".join(c if c.isalnum() else " " for c in text.replace("{", " ").replace("}", " "))
        words.update(w.lower() for w in cleaned.split())
    return words
