"""The paper's CLIP set-up on real-format data: retrieval-only and image-only evaluation samples,
and (slow) `python -m study.run search_spaces/paper_clip.yaml` end to end on a small corpus built
from real photographs (scikit-learn's sample images) and real digits (scikit-learn's digits)."""

import io
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from conftest import REPO, study_env
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

from study.run import main as study_main
from trainers.config import EvalConfig, RunConfig
from trainers.data import build_task_sets
from trainers.data.tasks import ProbeTask, RetrievalTask, TaskSets
from trainers.evaluate.suite import embedding_sample, evaluate_two_tower

PAPER_CLIP = REPO / "search_spaces" / "paper_clip.yaml"
IMAGE_SIZE = 32
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PHOTO_SUBJECTS = {"china.jpg": "a chinese temple", "flower.jpg": "a pink flower"}
PLACES = ["top left", "top right", "bottom left", "bottom right", "centre"]


# --------------------------------------------------------------------------- the real-format corpus


def _jpeg(array: np.ndarray) -> bytes:
    payload = io.BytesIO()
    Image.fromarray(array).save(payload, "JPEG", quality=90)
    return payload.getvalue()


def _photo_crops() -> list[tuple[np.ndarray, str]]:
    """Crops of scikit-learn's two real photographs, each with a caption naming subject, place and scale."""
    photos = load_sample_images()
    crops = []
    for filename, photo in zip(photos.filenames, photos.images, strict=True):
        subject = PHOTO_SUBJECTS[Path(filename).name]
        height, width = photo.shape[:2]
        for size in (96, 128, 160, 192):
            corners = {"top left": (0, 0), "top right": (0, width - size), "bottom left": (height - size, 0),
                       "bottom right": (height - size, width - size),
                       "centre": ((height - size) // 2, (width - size) // 2)}
            for place in PLACES:
                top, left = corners[place]
                for shift in (0, 24):
                    crop = photo[top + shift // 2:top + shift // 2 + size, left + shift:left + shift + size]
                    crops.append((np.ascontiguousarray(crop), f"a {size} pixel crop of {subject}, {place}"))
    return crops  # 2 photos x 4 sizes x 5 places x 2 shifts = 80


def _tar_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def build_corpus(root: Path) -> dict[str, str]:
    """WebDataset shards, a Karpathy-style retrieval JSON and a digit ImageFolder whose class folders
    sort differently from its class-name file; returns the paths a study's --set lines name."""
    crops = _photo_crops()
    shards = root / "shards"
    shards.mkdir(parents=True)
    for shard in range(4):
        with tarfile.open(shards / f"shard-{shard:03d}.tar", "w") as tar:
            for i, (crop, caption) in enumerate(crops[shard::4]):
                _tar_member(tar, f"{shard:03d}{i:04d}.jpg", _jpeg(crop))
                _tar_member(tar, f"{shard:03d}{i:04d}.txt", caption.encode())
    (shards / "sizes.json").write_text(json.dumps({f"shard-{shard:03d}.tar": 20 for shard in range(4)}))

    images = root / "coco" / "images"
    images.mkdir(parents=True)
    karpathy = []
    for i, (crop, caption) in enumerate(crops[::4]):
        Image.fromarray(crop).save(images / f"{i:03d}.jpg")
        karpathy.append({"filepath": "images", "filename": f"{i:03d}.jpg", "split": ["test", "val"][i % 2],
                         "sentences": [{"raw": caption}, {"raw": caption.replace("crop", "part")}]})
    (root / "coco" / "dataset_coco.json").write_text(json.dumps({"images": karpathy}))

    digits = load_digits()
    for label, name in enumerate(DIGIT_NAMES):
        (root / "digits" / name).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(digits.target == label)[:6]):
            grey = np.kron(digits.images[index] * (255 / 16), np.ones((4, 4))).astype(np.uint8)  # 8x8 -> 32x32
            Image.fromarray(np.stack([grey] * 3, axis=-1)).save(root / "digits" / name / f"{i}.png")
    (root / "digits.txt").write_text("".join(f"{name}\n" for name in DIGIT_NAMES))
    return {"shards": str(shards / "shard-{000..003}.tar"), "retrieval": str(root / "coco" / "dataset_coco.json"),
            "zeroshot": f"folder:{root / 'digits'}::{root / 'digits.txt'}"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def paper_clip_overrides(corpus: dict[str, str], **extra: str) -> list[str]:
    """paper_clip.yaml scaled down to CPU: tiny ResNet tower, 1 epoch, 2 Ray Train workers, and the
    baseline beside one arm with all three regularizers on."""
    settings = {
        "base.model.arch": "tiny-rn",
        "base.data.path": corpus["shards"],
        "base.data.samples_per_epoch": "null",  # the shards' sizes.json: 80 samples
        "base.data.image_size": str(IMAGE_SIZE),
        "base.data.num_loader_workers": "1",
        "base.data.zeroshot": json.dumps([corpus["zeroshot"]]),
        "base.data.annotations": json.dumps({"retrieval": corpus["retrieval"]}),
        "base.train": "{epochs: 1, batch_size: 8, warmup_steps: 1}",
        "base.resources": "{num_workers: 2, use_gpu: false, cpus_per_worker: 1}",
        "search.metric": "zeroshot/digits/top1",
        "search.space": "{regularizers: {type: grid, values: [{gc: 0.0, bb: 0.0, dfs: 0.0}, "
                        "{gc: 1.0, bb: 1.0, dfs: 1.0}]}}",
    } | extra
    return [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]


def _encoders(dim: int = 4):
    """Deterministic encoders: an image's mean colour, a caption's length (real code paths, tiny features)."""

    def encode_images(images: torch.Tensor) -> dict[str, torch.Tensor]:
        colour = images.float().mean(dim=(2, 3))
        return {"shared": torch.nn.functional.normalize(torch.cat([colour, torch.ones(len(images), dim - 3)], 1))}

    def encode_texts(captions: list[str]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([[len(c), 1.0, 2.0, 3.0] for c in captions])
        return {"shared": torch.nn.functional.normalize(lengths)}

    return encode_images, encode_texts


def test_embedding_sample_of_a_retrieval_only_evaluation_pairs_each_image_with_its_first_caption():
    images = torch.randint(0, 255, (3, 3, 8, 8), dtype=torch.uint8)
    retrieval = RetrievalTask(images=images, captions=["a", "bb", "ccc", "dddd"],
                              caption_to_image=torch.tensor([0, 0, 1, 2]))
    sample = embedding_sample(*_encoders(), TaskSets(retrieval=retrieval))
    assert sample["image"].shape == (3, 4) and sample["labels"].tolist() == [-1, -1, -1]
    expected = _encoders()[1](["a", "ccc", "dddd"])["shared"].numpy()
    np.testing.assert_allclose(sample["text"], expected, rtol=1e-6)
    empty = embedding_sample(*_encoders(), TaskSets())
    assert empty["image"].shape[0] == 0 and empty["text"].shape[0] == 0


def test_embedding_sample_of_an_image_only_probe_has_no_text():
    images = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    probe = ProbeTask(name="cifar10", kind="shared", train_images=images, train_captions=[],
                      train_labels=torch.arange(4), test_images=images, test_captions=[],
                      test_labels=torch.arange(4), num_classes=4)
    sample = embedding_sample(*_encoders(), TaskSets(probes=[probe]))
    assert sample["image"].shape == (4, 4) and sample["text"].shape[0] == 0
    # with a retrieval set beside it, the sample holds image-caption pairs: the plot is about both modalities
    retrieval = RetrievalTask(images=images[:3], captions=["a", "bb", "ccc"], caption_to_image=torch.arange(3))
    paired = embedding_sample(*_encoders(), TaskSets(probes=[probe], retrieval=retrieval))
    assert paired["image"].shape == (3, 4) and paired["text"].shape == (3, 4)
    assert paired["labels"].tolist() == [-1, -1, -1]


def test_report_pca_needs_both_modalities(tmp_path):
    from analysis.plots import has_image_and_text_embeddings

    np.savez(tmp_path / "image_only.npz", image=np.ones((4, 3)), text=np.zeros((0, 3)), labels=np.arange(4))
    np.savez(tmp_path / "pairs.npz", image=np.ones((4, 3)), text=np.ones((4, 3)), labels=np.arange(4))
    assert not has_image_and_text_embeddings(tmp_path / "image_only.npz")
    assert has_image_and_text_embeddings(tmp_path / "pairs.npz")


# --------------------------------------------------------------------------- zero-shot labels


def _real_config(corpus: dict[str, str], **data) -> RunConfig:
    return RunConfig.model_validate({"data": {"dataset": "webdataset", "path": corpus["shards"],
                                              "image_size": IMAGE_SIZE, "zeroshot": [corpus["zeroshot"]],
                                              "annotations": {"retrieval": corpus["retrieval"]}, **data}})


def test_a_model_that_scores_the_true_digit_gets_every_folder_zero_shot_image_right(corpus, tmp_path):
    """The folder's classes sort as eight, five, four, ... while the class-name file says zero, one, ...:
    an oracle that knows each image's digit (from the pixels written) and each prompt's class name
    must score 100%, on the test and on the validation half."""
    digits_root = Path(corpus["zeroshot"].removeprefix("folder:").split("::")[0])
    digit_of_pixels = {}
    for label, name in enumerate(DIGIT_NAMES):
        for path in (digits_root / name).iterdir():
            pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)
            digit_of_pixels[pixels.numpy().tobytes()] = label

    def encode_images(images: torch.Tensor) -> dict[str, torch.Tensor]:
        labels = [digit_of_pixels[image.cpu().numpy().tobytes()] for image in images]
        return {"shared": torch.nn.functional.one_hot(torch.tensor(labels), 10).float()}

    def encode_texts(prompts: list[str]) -> dict[str, torch.Tensor]:
        labels = [next(i for i, name in enumerate(DIGIT_NAMES) if re.search(rf"\b{name}\b", p)) for p in prompts]
        return {"shared": torch.nn.functional.one_hot(torch.tensor(labels), 10).float()}

    tasks = build_task_sets(_real_config(corpus).data)
    metrics = evaluate_two_tower(encode_images, encode_texts, tasks, EvalConfig(tasks=["zeroshot"]))
    assert metrics["zeroshot/digits/top1"] == 1.0 and metrics["val/zeroshot/digits/top1"] == 1.0
    assert len(tasks.zeroshot[0].labels) == len(tasks.validation.zeroshot[0].labels) == 30  # full set: 60 digits


# --------------------------------------------------------------------------- bad input, before Ray


def _tsv(folder: Path, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (20, 20), (200, 10, 10)).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    path = folder / "pairs.tsv"
    path.write_text("".join(f"{row}\n" for row in rows))
    return path


BAD_INPUTS = {
    # name: (--set lines beyond the corpus's, the one line expected)
    "tsv_missing_image": (lambda d, c: _csv_settings(_tsv(
        d, ["filepath\ttitle", *["a.jpg\tred"] * 20, "gone.jpg\tmissing"])),
        r"pairs\.tsv:row 22: image file .*gone\.jpg does not exist"),
    "tsv_unreadable_image": (lambda d, c: _csv_settings(_tsv(
        d, ["filepath\ttitle", *["a.jpg\tred"] * 20, "broken.jpg\tbroken"])),
        r"pairs\.tsv:row 22: cannot read image .*broken\.jpg"),
    "tsv_empty": (lambda d, c: _csv_settings(_tsv(d, [])),
                  r"pairs\.tsv: empty file"),
    "tsv_header_only": (lambda d, c: _csv_settings(_tsv(
        d, ["filepath\ttitle"])), r"pairs\.tsv: no image-caption pairs"),
    "tsv_fewer_rows_than_a_batch": (lambda d, c: _csv_settings(_tsv(
        d, ["filepath\ttitle", "a.jpg\tred", "b.jpg\tred"])),
        r"pairs\.tsv: 2 pairs are fewer than one batch of 8 on each of 2 worker"),
    "zeroshot_folder_missing": (lambda d, c: {"base.data.zeroshot": json.dumps([f"folder:{d}/nowhere::{d}/x.txt"])},
                                r"base\.data\.zeroshot\[0\]: .*nowhere does not exist"),
    "zeroshot_classes_mismatch": (lambda d, c: {"base.data.zeroshot": json.dumps(
        [c["zeroshot"].rsplit("::", 1)[0] + f"::{_names(d, DIGIT_NAMES[:9] + ['ten'])}"])},
        r"base\.data\.zeroshot\[0\]: folder:.*folders without a class: nine; classes without a folder: ten"),
    "webdataset_unknown_epoch": (lambda d, c: {"base.data.path": _shards_without_sizes(d, c),
                                               "base.data.samples_per_epoch": "null"},
                                 r"base\.data\.samples_per_epoch: required for WebDataset shards"),
    "webdataset_too_few_shards": (lambda d, c: {"base.data.num_loader_workers": "3"},
                                  r"base\.data\.path: 4 shard\(s\) cannot be split among 2 Ray Train worker"),
    "retrieval_json_missing_image": (lambda d, c: {"base.data.annotations": json.dumps(
        {"retrieval": _karpathy_with_missing_image(d)})},
        r"dataset_coco\.json:entry 1: image file .*missing\.jpg does not exist"),
}


def _csv_settings(table: Path) -> dict[str, str]:
    return {"base.data.dataset": "csv", "base.data.path": str(table), "base.data.image_key": "filepath",
            "base.data.caption_key": "title"}


def _names(folder: Path, names: list[str]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "names.txt").write_text("\n".join(names))
    return str(folder / "names.txt")


def _shards_without_sizes(folder: Path, corpus: dict[str, str]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(corpus["shards"]).parent
    for shard in source.glob("*.tar"):
        (folder / shard.name).write_bytes(shard.read_bytes())
    return str(folder / "shard-{000..003}.tar")


def _karpathy_with_missing_image(folder: Path) -> str:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20)).save(folder / "images" / "here.jpg")
    entries = [{"filepath": "images", "filename": name, "split": split, "sentences": [{"raw": "x"}]}
               for name, split in (("here.jpg", "test"), ("missing.jpg", "val"))]
    (folder / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    return str(folder / "dataset_coco.json")


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_real_input_is_one_line_and_exit_2_before_ray_starts(case, corpus, tmp_path, capsys):
    make, expected = BAD_INPUTS[case]
    overrides = paper_clip_overrides(corpus, **make(tmp_path / "input", corpus))
    code = study_main([str(PAPER_CLIP), "--results", str(tmp_path / "results"), *overrides])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(errors) == 1, errors
    assert re.search(expected, errors[0]), errors[0]
    assert not ray.is_initialized()


def test_paper_clip_names_a_per_set_metric_and_checks_paths():
    from trainers.study_spec import load_study

    text = PAPER_CLIP.read_text()
    assert re.search(r"^  metric: zeroshot/(cifar10|cifar100|imagenet)/top1", text, re.MULTILINE)  # per set
    with pytest.raises(ValueError, match="base.data.path: directory /path/to/cc3m"):
        load_study(PAPER_CLIP)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_paper_clip_runs_end_to_end_on_real_format_data(corpus, tmp_path):
    """`python -m study.run search_spaces/paper_clip.yaml` on WebDataset shards of real photographs,
    a Karpathy-style JSON and a digit ImageFolder: 2-worker trials, a complete report, exit 0."""
    results = tmp_path / "results"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "study.run", str(PAPER_CLIP), "--results", str(results),
                           *paper_clip_overrides(corpus)], cwd=REPO, env=study_env(), capture_output=True,
                          text=True, timeout=900)
    elapsed = time.perf_counter() - started
    print(f"paper_clip end to end: {elapsed:.0f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 trials, 0 failed" in proc.stdout and "report: " in proc.stdout
    rows = [json.loads(line) for path in results.glob("trials/*/result.json") for line in path.read_text().splitlines()]
    final = [row for row in rows if "zeroshot/digits/top1" in row]
    assert len(final) == 2 and all("retrieval/mean_recall" in row and "val/retrieval/mean_recall" in row
                                   for row in final)
    assert any(row.get("train/dfs_loss", 0) > 0 and row.get("train/gc_loss", 0) > 0 for row in rows)
    report = (results / "report" / "report.html").read_text()
    assert "zeroshot/digits/top1" in report and "retrieval/mean_recall" in report
    # every trial's embeddings sample reaches its directory (a reused trial actor stages elsewhere)
    trials = sorted(results.glob("trials/trial_*"))
    assert len(trials) == 2 and all((trial / "embeddings.npz").is_file() for trial in trials)
    # the PCA section found both trials' samples (it is left out silently when one lacks its file), and
    # they pair images with captions from the retrieval set although the zero-shot probe has no text
    assert "Embeddings: baseline and best regularized model (PCA)" in report

    # the checkpoint evaluates again; asking only for a task without data is one line, exit 2
    checkpoint = next(results.glob("train/**/checkpoint_epoch_0000"), None) or next(
        results.glob("trials/*/checkpoint_*"))
    asked = subprocess.run([sys.executable, "-m", "trainers.evaluate", str(checkpoint), "--tasks", "retrieval",
                            "--set", "data.annotations={}"], cwd=REPO, env=study_env(), capture_output=True,
                           text=True, timeout=300)
    assert asked.returncode == 2 and re.search(r"--tasks: no data for retrieval .*data\.annotations\.retrieval",
                                               asked.stderr), asked.stderr[-2000:]


def write_pairs_table(corpus: dict[str, str], root: Path, corrupt_row: int | None = None) -> Path:
    """A TSV of the corpus's photographs (as PNG) and captions; `corrupt_row`'s image keeps its header
    (the pre-Ray check reads it) and loses its pixels, so only the worker that decodes it finds it."""
    annotations = Path(corpus["retrieval"])
    root.mkdir(parents=True, exist_ok=True)
    lines = ["filepath\ttitle"]
    for index, entry in enumerate(json.loads(annotations.read_text())["images"]):
        image = root / f"{index:03d}.png"
        Image.open(annotations.parent / entry["filepath"] / entry["filename"]).save(image)
        if index == corrupt_row:
            image.write_bytes(image.read_bytes()[:100])
        lines.append(f"{image.name}\t{entry['sentences'][0]['raw']}")
    table = root / "pairs.tsv"
    table.write_text("\n".join(lines) + "\n")
    return table


@pytest.mark.slow
def test_a_corrupt_training_image_fails_its_trial_once_and_the_study_goes_on(corpus, tmp_path):
    """One arm trains on a TSV whose row 7 holds a corrupt image: that trial is failed with the row in its
    reason, after one attempt (Ray Train may retry twice but is never asked), and the other arm finishes."""
    good = write_pairs_table(corpus, tmp_path / "good")
    bad = write_pairs_table(corpus, tmp_path / "bad", corrupt_row=5)
    results = tmp_path / "results"
    overrides = paper_clip_overrides(corpus, **{
        "base.data.dataset": "csv", "base.data.path": str(good), "base.data.image_key": "filepath",
        "base.data.caption_key": "title", "base.data.samples_per_epoch": "null",
        "base.train": "{epochs: 1, batch_size: 8, warmup_steps: 1, max_failures: 2}",
        "search.space": json.dumps({"data.path": {"type": "grid", "values": [str(good), str(bad)]}}),
    })
    proc = subprocess.run([sys.executable, "-m", "study.run", str(PAPER_CLIP), "--results", str(results),
                           *overrides], cwd=REPO, env=study_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 trials, 1 failed" in proc.stdout
    from analysis.loading import load

    frame = load(results).set_index("data.path")
    assert frame.loc[str(good), "status"] == "finished"
    assert frame.loc[str(bad), "status"] == "failed"
    reason = frame.loc[str(bad), "error"]
    assert re.search(rf"{re.escape(str(bad))}:row 7: cannot read image .*005\.png", reason), reason
    bad_trial = Path(frame.loc[str(bad), "trial_dir"])
    assert (bad_trial / "bad_input.txt").read_text() in reason
    # one attempt: Tune appends each failure to error.txt, and a retried worker group would log its retry
    assert (bad_trial / "error.txt").read_text().count("005.png (") == 1
    assert "[FailurePolicy] RETRY" not in proc.stdout + proc.stderr
    train_run = results / "train" / bad_trial.name  # the Train run is named as the trial's directory
    assert train_run.is_dir() and not list(train_run.glob("checkpoint_*"))


@pytest.mark.parametrize("family", ["clip", "albef"])
def test_a_webdataset_epoch_is_whole_batches_for_every_family(corpus, family):
    """80 samples in batches of 12: 72 per epoch, so the scheduler's steps (len // batch) are all taken."""
    from trainers.family import get_family

    cfg = RunConfig.model_validate({
        "model": {"family": family},
        "data": {"dataset": "webdataset", "path": corpus["shards"], "num_loader_workers": 1, "image_size": 32},
        "train": {"batch_size": 12},
    })
    assert len(get_family(family).build_train_dataset(cfg)) == 72
