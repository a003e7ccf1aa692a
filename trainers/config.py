"""The run configuration: YAML in, typed and validated objects out.

One `RunConfig` describes one training run (what `python -m trainers.train` runs, and a
study's `base:`). It is validated once, here, at the edge; everything deeper receives these
objects, never raw dicts. Unknown keys are errors, and every error names its dotted path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo, model_validator

from trainers.storage import is_uri, local_path


class ConfigError(ValueError):
    """A user-facing configuration problem; the message starts with the key's dotted path."""


# Validation context key: False where a configuration is read away from its data (results copied off a
# cluster, read for their report), so local data paths need not exist there.
CHECK_PATHS = "check_paths"


class StrictModel(BaseModel):
    """Every configuration block: unknown keys are errors, and so are invalid values set after loading."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _ModelConfigBase(StrictModel):
    """What every model family's configuration has: the family that reads it, and the architecture a
    checkpoint's weights must match."""

    family: str

    def architecture(self) -> str:
        raise NotImplementedError


class ClipModelConfig(_ModelConfigBase):
    family: Literal["clip"] = "clip"
    # An open_clip architecture name (ViT-B-32, RN50, ...) or one of the small configs
    # shipped in trainers/model_configs (registered with open_clip.add_model_config).
    arch: str = "tiny-vit"
    # open_clip pretrained tag (needs a hub) or a path to a local checkpoint file.
    pretrained: str | None = None

    def architecture(self) -> str:
        return self.arch


class AlbefModelConfig(_ModelConfigBase):
    family: Literal["albef"] = "albef"
    # BERT layers split into text and fusion layers; a ViT (or small CNN) image tower; ITC's projection and queue.
    # "small_cnn": the CLIP tiny-cnn's convolutional tower (trainers/small_cnn.py), its last feature map's cells
    # the fusion encoder's image tokens; a from-scratch ViT on a CPU budget does not learn the world's shapes
    image_tower: Literal["vit", "small_cnn"] = "vit"
    text_layers: int = Field(2, ge=1)
    fusion_layers: int = Field(2, ge=1)
    hidden_size: int = Field(128, ge=8)
    num_heads: int = Field(4, ge=1)
    patch_size: int = Field(8, ge=1)
    vision_layers: int = Field(2, ge=1)
    embed_dim: int = Field(64, ge=2)
    queue_size: int = Field(1024, ge=1)
    momentum: float = Field(0.995, ge=0.0, le=1.0)
    distill_alpha: float = Field(0.4, ge=0.0, le=1.0)
    mlm_probability: float = Field(0.15, ge=0.0, le=1.0)
    # MLM's weight ramps linearly from 0 over this many optimizer steps (ALBEF: 0, it starts from a pre-trained
    # BERT). From scratch, MLM is solved from the text alone and trains the fusion layers to pass the image over
    # before ITC has aligned anything, which holds ITM at its prior for hundreds of steps longer.
    mlm_ramp_steps: int = Field(0, ge=0)
    # ITM's negatives: "hard" draws each from the softmax of the ITC similarities, as ALBEF; "random" uniformly.
    # Where many captions are true of an image (the embedded world states the shape and material; the owner is
    # not drawn) the hardest negatives are mostly true pairs, and ITM trained on them learns only its prior
    itm_negatives: Literal["hard", "random"] = "hard"
    # ITC features: "cls" = the [CLS] output, as ALBEF; "mean" = the mean over text tokens / image
    # patches, for towers trained from scratch on a small budget, whose [CLS] starts out the same for every
    # input (attention is uniform at initialisation) and stays so for hundreds of steps
    pooling: Literal["cls", "mean"] = "cls"

    def architecture(self) -> str:
        image = "small_cnn" if self.image_tower == "small_cnn" else f"vit{self.vision_layers}/p{self.patch_size}"
        return (f"{image}-bert{self.text_layers}+{self.fusion_layers}"
                f"-h{self.hidden_size}x{self.num_heads}-e{self.embed_dim}")


MODEL_FAMILIES: tuple[str, ...] = ("clip", "albef")


def _model_family(value: Any) -> str | None:
    # `family` may be left out (clip); a value of the wrong type finds no tag and is reported below
    family = value.get("family", "clip") if isinstance(value, dict) else getattr(value, "family", None)
    return family if family in MODEL_FAMILIES else None


# One configuration class per family, chosen by `family`: a key of another family is an unknown key.
ModelConfig = Annotated[
    Annotated[ClipModelConfig, Tag("clip")] | Annotated[AlbefModelConfig, Tag("albef")],
    Discriminator(
        _model_family,
        custom_error_type="model_family",
        custom_error_message=f"family: expected one of {', '.join(MODEL_FAMILIES)}",
    ),
]


class DataConfig(StrictModel):
    dataset: Literal["synthetic", "csv", "webdataset", "coco_json"] = "synthetic"
    # synthetic world
    train_size: int = Field(4096, ge=1)
    eval_size: int = Field(1024, ge=16)
    # 1: colour and owner independent of the shape (world.py). Below 1 the colour follows the shape for
    # a share of the samples, a shortcut that lets the image tower name shapes without their outlines.
    info_gap: float = Field(1.0, ge=0.0, le=1.0)
    image_size: int = Field(64, ge=16)
    world_seed: int = 0
    # True: world_seed is set to train.seed, so a study's seeds also draw different worlds (train,
    # validation and test samples) -- for claims about the world, not one sample of it. False: every
    # seed trains on the same world and varies only initialisation, batch order and augmented views.
    world_seed_follows_train_seed: bool = False
    # smaller objects beside the main one (0..2 per scene): none by default, so that shape is learnable in
    # the CLIP studies' CPU budget; the fused tasks that count or compare objects (ALBEF) need them
    distractors: int = Field(0, ge=0, le=2)
    cache_dir: str | None = None
    # real data (paths are checked to exist at validation time)
    path: str | None = None
    # CSV/TSV columns, or WebDataset member extensions ("jpg;png": the first present); the default
    # depends on the data set: filepath / title (open_clip's CSV), jpg;jpeg;png;webp / txt (WebDataset)
    image_key: str = "filepath"
    caption_key: str = "title"
    separator: str = "\t"
    image_root: str | None = None
    zeroshot: list[str] = Field(default_factory=list)  # e.g. ["cifar10:/data/cifar", "imagenet:/data/val"]
    # ALBEF-style JSON annotations of downstream tasks on real data (images under image_root)
    annotations: dict[
        Literal["retrieval", "retrieval_val", "vqa_train", "vqa_test", "vqa_answers", "nlvr_train", "nlvr_test",
                "ve_train", "ve_test"],
        str,
    ] = Field(default_factory=dict)
    vocab_file: str | None = None
    # real evaluation sets are used in full; eval_limit caps each (printed beside the paper's numbers)
    eval_limit: int | None = Field(None, ge=2)
    # images of a real set's training split (CIFAR) that its linear probe is fitted on
    probe_train_size: int = Field(10000, ge=2)
    num_loader_workers: int = Field(1, ge=0)
    # WebDataset: samples in one epoch of the stream (open_clip's --train-num-samples); default:
    # the count in a sizes.json beside the shards
    samples_per_epoch: int | None = Field(None, ge=1)
    # a loader worker that skips more than this fraction of the samples it read (undecodable
    # images, truncated shards) fails the run
    max_skipped_fraction: float = Field(0.01, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _webdataset_member_defaults(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("dataset") == "webdataset":
            values = {"image_key": "jpg;jpeg;png;webp", "caption_key": "txt", **values}
        return values

    @model_validator(mode="after")
    def _real_data_needs_path(self, info: ValidationInfo) -> DataConfig:
        if self.dataset != "synthetic" and self.path is None:
            raise ValueError(f"path: required when dataset is {self.dataset!r}")
        if not (info.context or {}).get(CHECK_PATHS, True):
            return self
        if self.dataset != "synthetic":
            for path in _split_path_list(self.path):
                if not is_uri(path) and not local_path(path).exists() and not _is_brace_pattern(path):
                    raise ValueError(f"path: {path} does not exist")
        for task, path in self.annotations.items():
            if not is_uri(path) and not local_path(path).is_file():
                raise ValueError(f"annotations.{task}: {path} does not exist")
        return self


class TrainConfig(StrictModel):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)  # per worker
    lr: float = Field(5.0e-4, gt=0.0)
    # The image and text towers' rates as multiples of `lr` (which also sets the logit scale's). Trained from
    # scratch together, a small CNN and a small transformer want rates two orders of magnitude apart: on the
    # embedded world one shared 5e-3 left the image tower's shape probe near chance and erased the shape the
    # random text tower carried at initialisation (README, "Learning rates per tower"). Multiples, so that
    # a search over `lr` still moves every rate. ALBEF's fusion encoder and heads train at `lr`.
    image_tower_lr_scale: float = Field(1.0, gt=0.0)
    text_tower_lr_scale: float = Field(1.0, gt=0.0)
    weight_decay: float = Field(0.1, ge=0.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    eps: float = Field(1.0e-8, gt=0.0)
    warmup_steps: int = Field(50, ge=0)
    grad_clip_norm: float | None = Field(1.0, gt=0.0)
    grad_accum_steps: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False
    seed: int = 0
    report_every_steps: int | None = Field(None, ge=1)  # also report mid-epoch every K steps
    max_failures: int = Field(2, ge=0)


class RegularizerConfig(StrictModel):
    """Weights of the paper's three regularizers (0 = off) and their options."""

    gc: float = Field(0.0, ge=0.0)
    bb: float = Field(0.0, ge=0.0)
    dfs: float = Field(0.0, ge=0.0)
    inmodal: bool = False
    # Explicit alignment pressure (1 - <v_j, t_j>), the well-behaved form of the paper's Fig. 2 term.
    align: float = Field(0.0, ge=0.0)
    bb_s: float = Field(0.25, gt=0.0, lt=1.0)
    bb_s_range: tuple[float, float] | None = None  # draw s ~ U(a, b) per sample instead
    dfs_temperature: float | None = Field(None, gt=0.0)  # default: 1 / logit scale
    # False drops DFS's orthogonality term L_ortho and keeps the independent heads' in-modal InfoNCE and
    # uniformity: the control arm "same in-modal self-supervision, no separation".
    dfs_separation: bool = True
    # "paper": L_GC and L^a_GC's sums over the N^2 pairs (j, k) divided by N, as defined, so their value
    # grows about linearly with the batch size N; "per_pair": divided by N^2, so a weight carries
    # across batch sizes (docs/regularizers.md). The N-term diagonal part of L^a_GC stays a mean.
    gc_normalization: Literal["paper", "per_pair"] = "paper"

    @model_validator(mode="after")
    def _check_range(self) -> RegularizerConfig:
        if self.bb_s_range is not None:
            low, high = self.bb_s_range
            if not 0.0 < low < high < 1.0:
                raise ValueError("bb_s_range: must satisfy 0 < low < high < 1")
        return self


EvalTask = Literal["zeroshot", "retrieval", "linear_probe", "kshot", "structure", "vqa", "nlvr", "ve"]
EVAL_TASKS: tuple[str, ...] = get_args(EvalTask)


class EvalConfig(StrictModel):
    tasks: list[EvalTask] = Field(default_factory=lambda: ["zeroshot", "retrieval", "linear_probe", "structure"])
    every_epoch: bool = True  # evaluate after every epoch (else only after the last)
    kshot: list[int] = Field(default_factory=lambda: [1, 5, 10])
    # ALBEF downstream heads (VQA, NLVR, VE) are fine-tuned on a copy of the pre-trained model;
    # small synthetic task sets need many small steps to learn more than the answer prior
    finetune_epochs: int = Field(3, ge=1)
    finetune_batch_size: int = Field(16, ge=1)
    finetune_lr: float | None = Field(None, gt=0.0)  # default: train.lr


class ResourcesConfig(StrictModel):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    # A study trial with 1 worker runs the training loop inside its own Tune trial process (no Ray
    # Train controller and no worker group to start per trial); Tune persists its checkpoints and
    # restarts it on failure. false: a worker group, as with N workers.
    in_trial_process: bool = True

    def trains_in_trial_process(self) -> bool:
        return self.in_trial_process and self.num_workers == 1


class RunConfig(StrictModel):
    name: str = "run"
    model: ModelConfig = Field(default_factory=ClipModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    regularizers: RegularizerConfig = Field(default_factory=RegularizerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @model_validator(mode="after")
    def _world_follows_seed(self) -> RunConfig:
        if self.data.world_seed_follows_train_seed and self.data.world_seed != self.train.seed:
            self.data.world_seed = self.train.seed
        return self


# --------------------------------------------------------------------------- loading


def _split_path_list(path: str) -> list[str]:
    return [p for p in path.split("::") if p]


def _is_brace_pattern(path: str) -> bool:
    return "{" in path and ".." in path  # webdataset shard pattern such as shards-{000..099}.tar


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem, each starting with the key's dotted path in the YAML."""
    lines = []
    for item in error.errors():
        loc, family = _split_family_tag([str(p) for p in item["loc"]])
        message = item["msg"].removeprefix("Value error, ")
        # a model validator reports "field: message" (or "section.field: message"); fold it into the path
        if ": " in message and message.split(": ", 1)[0].replace("_", "").replace(".", "").isalnum():
            field, message = message.split(": ", 1)
            loc.append(field)
        if item["type"] == "extra_forbidden":
            message = f"not a key of the {family} family" if family else "unknown key"
        path = ".".join(p for p in [prefix, *loc] if p)
        lines.append(f"{path}: {message}" if path else message)
    return "; ".join(lines)


def _split_family_tag(loc: list[str]) -> tuple[list[str], str | None]:
    """pydantic puts the model union's tag into the location: model.clip.queue_size is model.queue_size
    of the clip family."""
    for i in range(1, len(loc)):
        if loc[i - 1] == "model" and loc[i] in MODEL_FAMILIES:
            return loc[:i] + loc[i + 1:], loc[i]
    return loc, None


def parse_override(text: str) -> tuple[str, Any]:
    """`dotted.key=value` with the value parsed as YAML (so 0.5, true, [a, b] have their types)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML ({exc.problem})") from None
    return key.strip(), value


def get_dotted(tree: dict, key: str) -> Any:
    """tree["a"]["b"] for "a.b", or None where a level is missing."""
    for part in key.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def set_dotted(tree: dict, key: str, value: Any, merge: bool = False) -> None:
    """Set `a.b.c` in a nested dict, creating levels; a non-dict in the way is an error.
    `merge`: a mapping set on a mapping is merged into it (`regularizers={gc: 1}` keeps the other weights)."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is not a mapping")
        node = child
    if merge and isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
        node[parts[-1]] = _merged(node[parts[-1]], value)
    else:
        node[parts[-1]] = value


def _merged(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both else value
    return merged


def read_yaml(path: str | Path) -> dict:
    """safe_load a YAML mapping; a missing file or malformed YAML is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: malformed YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


EXTENDS_KEY = "extends"
# What a study searches and the comparisons it pre-registers on that are its own: a file that gives them
# replaces its parent's whole instead of merging into them. The name is its own too (its results directory).
REPLACED_WHOLE = ("search.space", "hypothesis")


def read_config_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """read_yaml, with `extends: other.yaml` (relative to this file) resolved: this file is that one with
    its own keys over it, mapping by mapping, except `name` and REPLACED_WHOLE. A chain is followed; a
    missing parent or a cycle is a ConfigError naming the file that asks for it."""
    path = Path(path)
    tree = read_yaml(path)
    parent_name = tree.pop(EXTENDS_KEY, None)
    if parent_name is None:
        return tree
    if not isinstance(parent_name, str):
        raise ConfigError(f"{path}: {EXTENDS_KEY}: expected a file name, got {parent_name!r}")
    parent_path = (path.parent / parent_name).resolve()
    chain = (*_chain, path.resolve())
    if parent_path in chain:
        raise ConfigError(f"{path}: {EXTENDS_KEY}: {parent_name} comes back to this file (a cycle)")
    if not parent_path.is_file():
        raise ConfigError(f"{path}: {EXTENDS_KEY}: no such file {path.parent / parent_name}")
    parent = read_config_yaml(parent_path, chain)
    parent.pop("name", None)
    merged = _merged(parent, tree)
    for key in REPLACED_WHOLE:
        own = get_dotted(tree, key)
        if own is not None:
            set_dotted(merged, key, own)
    return merged



def build_run_config(tree: dict, prefix: str = "") -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix)) from None


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a run YAML (or a study YAML, whose `base:` is used), apply `--set`s, validate."""
    tree = read_config_yaml(path)
    prefix = ""
    if "base" in tree and "search" in tree:
        study_name = tree.get("name", "run")
        tree, prefix = dict(tree["base"] or {}), "base"
        tree.setdefault("name", study_name)
    for item in overrides:
        set_dotted(tree, *parse_override(item))
    return build_run_config(tree, prefix)


def flatten(tree: dict, prefix: str = "", separator: str = ".") -> dict[str, Any]:
    """Nested dict -> {dotted.key: value}; used for trial parameters and result tables (Tune's table
    joins with "/" instead)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{separator}{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, dotted, separator))
        else:
            flat[dotted] = value
    return flat

