"""The synthetic image-caption world with an information gap (docs/regularizers.md, Theorem 3.1).

A scene holds the *main* object (the largest, drawn last) and up to `distractors` smaller ones;
the main object's shape is the shared label and the zero-shot class. The world is built so that
contrastive training needs the shape: captions always name it and state colour, size and position
only sometimes, and the objects are large enough, and the pixels clean enough, for a small CNN to
read an outline in a few hundred steps. Each modality also carries information the other lacks:

- image side: the main object's colour is always drawn but stated in only 20% of captions; its
  texture and the background pattern are drawn but never written;
- text side: the main object's owner and material are written but the renderer never reads them.

`info_gap` sets, per sample, the probability that colour and owner are drawn independently at
random; otherwise they are a fixed function of the shape, so at 0 both modalities carry the same
label information and at 1 each carries some that the other lacks. Colour, not texture, is the
image side of the gap because it is what a small tower learns although captions rarely state it
(texture and background, never written, stay at chance in the image embedding, so alignment could
not cost them anything).

Every scene depends only on (world_seed, split, index), so splits never share a sample and a
sample does not change when the split grows. `render_scenes` reads only the visual fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink")
COLOUR_RGB = np.array(
    [[210, 45, 45], [50, 170, 60], [50, 80, 215], [225, 210, 50],
     [140, 60, 180], [235, 130, 30], [50, 200, 210], [235, 120, 180]],
    dtype=np.float32,
)
SIZES = ("small", "medium", "large")
# fraction of the image side: at 64 px the smallest main object is ~26 px across, so its outline (not
# only its colour) is legible to a small CNN within a CPU-sized run (at 0.10-0.20 the shape probe
# stayed at chance)
SIZE_RADIUS = (0.20, 0.25, 0.30)
POSITIONS = (
    "in the top left", "at the top", "in the top right",
    "on the left", "in the middle", "on the right",
    "in the bottom left", "at the bottom", "in the bottom right",
)
# image-only attributes: rendered, never written
TEXTURES = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS = ("plain", "gradient", "grid", "waves")
# text-only attributes: written, never rendered
OWNERS = ("alice", "bob", "carol", "dave")
MATERIALS = ("wood", "metal", "plastic", "glass", "paper")
COUNT_WORDS = ("one", "two", "three")

MAX_OBJECTS = 3  # object slots per scene (the arrays' width)
# Distractors per scene by default (`data.distractors`, at most MAX_OBJECTS - 1). None: one costs the
# shape probe ~0.1 in the CLIP studies' budget; the fused tasks that count objects need them.
DEFAULT_DISTRACTORS = 0
# What each split is for: "train" pre-trains; "task_train" trains the downstream probes and heads;
# "validation" scores them for selecting hyperparameters; "test" scores them for reporting. The ids
# seed the samples, so existing splits keep their samples when one is added.
SPLIT_IDS = {"train": 0, "task_train": 1, "test": 2, "validation": 3}
WORLD_VERSION = 5  # bump when generation changes, so caches are rebuilt

# Synonyms the captions may use and that EDA replaces; zero-shot class names stay canonical.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disc",), "square": ("tile",), "triangle": ("wedge",), "diamond": ("rhombus",),
    "cross": ("plus",), "ring": ("hoop",), "star": ("pentagram",), "hexagon": ("hex",),
    "small": ("little", "tiny"), "medium": ("midsize",), "large": ("big", "huge"),
    "photo": ("picture", "snapshot"), "belongs": ("goes",), "next": ("close",), "near": ("beside",),
    "there": ("here",), "sits": ("rests", "lies"), "thing": ("object", "item"),
}

# {thing} is the main object's "[size] [colour] shape" and {where} its " position"; which of size,
# colour and position a caption states is drawn per caption (CAPTION_MENTION_PROBABILITY), the shape
# always. A caption that always stated colour, size and position would tell a batch's pairs apart
# without its shape (8 colours x 9 positions x 3 sizes), and contrastive training learns only what
# tells pairs apart: the image towers then never learned shape (shape probe at chance).
CAPTION_TEMPLATES = (
    "a {thing}{where}, made of {material} and owned by {owner}",
    "{owner}'s {material} {thing}{where}",
    "there is a {thing}{where} that belongs to {owner}; it is {material}",
    "a photo of {owner}'s {thing}{where}; it is {material}",
    "this {thing}{where} sits here, {owner} owns this {material} thing",
    "the {material} {thing}{where} is property of {owner}",
)
# measured on tiny-cnn (gc base): stated half the time, the shape probe stayed near chance; colour at 0.2
# still gives colour zero-shot ~0.6-0.95, so the colour set stays meaningful
CAPTION_MENTION_PROBABILITY = {"size": 0.15, "colour": 0.2, "position": 0.15}
# Distractors are counted, never named: a second shape word made the text embedding's shape ambiguous.
DISTRACTOR_CLAUSES = (" with {count} objects in view", " among {count} objects")


@dataclass
class Scenes:
    """Attributes of N scenes as arrays; object slot MAX_OBJECTS-1 is the main object."""

    shape: np.ndarray  # (N, 3) int, -1 where the slot is empty
    colour: np.ndarray  # (N, 3) int
    radius: np.ndarray  # (N, 3) float, pixels
    centre: np.ndarray  # (N, 3, 2) float, pixels (x, y)
    texture: np.ndarray  # (N, 3) int
    colour_rgb: np.ndarray  # (N, 3, 3) float, jittered colour
    background: np.ndarray  # (N,) int
    background_rgb: np.ndarray  # (N, 3) float
    noise_seed: np.ndarray  # (N,) uint64
    size: np.ndarray  # (N,) int, main object's size class
    position: np.ndarray  # (N,) int, main object's grid cell
    owner: np.ndarray  # (N,) int
    material: np.ndarray  # (N,) int
    caption_seed: np.ndarray  # (N,) uint64

    def __len__(self) -> int:
        return len(self.background)

    @property
    def label(self) -> np.ndarray:
        return self.shape[:, -1]

    @property
    def num_objects(self) -> np.ndarray:
        return (self.shape >= 0).sum(axis=1)

    def subset(self, index: np.ndarray) -> Scenes:
        return Scenes(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})

    def attributes(self) -> dict[str, np.ndarray]:
        """Per-sample labels that probes and the cache use."""
        return {
            "class": self.label, "colour": self.colour[:, -1], "size": self.size,
            "position": self.position, "texture": self.texture[:, -1], "background": self.background,
            "owner": self.owner, "material": self.material, "num_objects": self.num_objects,
        }


def _sample_seed(world_seed: int, split: str, index: int, stream: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([world_seed, SPLIT_IDS[split], index, stream])


def sample_scenes(world_seed: int, split: str, start: int, count: int, info_gap: float,
                  image_size: int, distractors: int = DEFAULT_DISTRACTORS) -> Scenes:
    """Draw scenes start..start+count of a split; each from its own (seed, split, index) stream, with
    0..`distractors` smaller objects beside the main one."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split: unknown split {split!r} (expected one of {sorted(SPLIT_IDS)})")
    if not 0 <= distractors < MAX_OBJECTS:
        raise ValueError(f"distractors: must be between 0 and {MAX_OBJECTS - 1}, got {distractors}")
    # one uniform vector per sample, mapped to attributes below in a vectorized way
    draws = np.stack([
        np.random.Generator(np.random.PCG64(_sample_seed(world_seed, split, i, 0))).random(40)
        for i in range(start, start + count)
    ]) if count else np.zeros((0, 40))
    seeds = np.stack([
        _sample_seed(world_seed, split, i, 1).generate_state(2, dtype=np.uint64)
        for i in range(start, start + count)
    ]) if count else np.zeros((0, 2), dtype=np.uint64)
    return _scenes_from_draws(draws, seeds, info_gap, image_size, distractors)


def _pick(u: np.ndarray, n: int) -> np.ndarray:
    return np.minimum((u * n).astype(np.int64), n - 1)


def _scenes_from_draws(d: np.ndarray, seeds: np.ndarray, info_gap: float, image_size: int,
                       distractors: int) -> Scenes:
    n, s = len(d), float(image_size)
    num_distractors = _pick(d[:, 0], distractors + 1)
    shape = _pick(d[:, 1:4], len(SHAPES))
    colour = _pick(d[:, 4:7], len(COLOURS))
    size = _pick(d[:, 7], len(SIZES))
    main_radius = np.asarray(SIZE_RADIUS)[size] * s * (0.9 + 0.2 * d[:, 8])
    # distractors are smaller than the main object, so "main" is well defined
    low = 0.055 * s
    distractor_radius = low + (np.maximum(main_radius[:, None] * 0.8, low) - low) * d[:, 9:11]
    radius = np.concatenate([distractor_radius, main_radius[:, None]], axis=1)
    position = _pick(d[:, 11], len(POSITIONS))
    cell = np.stack([position % 3, position // 3], axis=1).astype(np.float32)
    main_centre = (0.2 + 0.3 * cell + 0.12 * (d[:, 12:14] - 0.5)) * s
    main_centre = np.clip(main_centre, main_radius[:, None], s - main_radius[:, None])
    distractor_centre = radius[:, :2, None] + d[:, 14:18].reshape(n, 2, 2) * (s - 2 * radius[:, :2, None])
    centre = np.concatenate([distractor_centre, main_centre[:, None]], axis=1)
    empty = np.arange(2)[None, :] < (2 - num_distractors[:, None])
    shape[:, :2][empty] = -1
    texture = _pick(d[:, 18:21], len(TEXTURES))
    owner = _pick(d[:, 21], len(OWNERS))
    # the information-gap knob: with probability 1 - info_gap, colour and owner follow the class
    tied = d[:, 22] >= info_gap
    main_shape = shape[:, -1]
    colour[tied, -1] = main_shape[tied] % len(COLOURS)
    owner[tied] = (main_shape[tied] // 2) % len(OWNERS)
    colour_rgb = np.clip(COLOUR_RGB[colour] + 50 * (d[:, 23:32].reshape(n, 3, 3) - 0.5), 0, 255)
    return Scenes(
        shape=shape, colour=colour, radius=radius.astype(np.float32), centre=centre.astype(np.float32),
        texture=texture, colour_rgb=colour_rgb.astype(np.float32),
        background=_pick(d[:, 32], len(BACKGROUNDS)),
        background_rgb=(70 + 80 * d[:, 33:36]).astype(np.float32),
        noise_seed=seeds[:, 0], size=size, position=position, owner=owner,
        material=_pick(d[:, 36], len(MATERIALS)), caption_seed=seeds[:, 1],
    )
