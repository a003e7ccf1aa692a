"""`python -m trainers.evaluate` on a checkpoint of a real short CPU run (built without Ray)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers.checkpoint import save_training_state
from trainers.clip import CLIP_FAMILY
from trainers.config import build_run_config
from trainers.evaluate.__main__ import evaluate_checkpoint, find_checkpoint, main
from trainers.family import total_loss
from trainers.loop import build_optimizer, cosine_schedule, seed_everything

RUN = {
    "name": "evalcli",
    "model": {"family": "clip", "arch": "tiny-vit"},
    "data": {"train_size": 256, "eval_size": 64, "info_gap": 0.5},
    "train": {"epochs": 1, "batch_size": 64, "lr": 2e-3, "warmup_steps": 1},
    "regularizers": {"gc": 0.5, "dfs": 0.5},  # DFS adds heads: the loaded module must have them too
    "eval": {"tasks": ["zeroshot", "retrieval", "structure"]},
}
pytestmark = pytest.mark.slow  # trains a few steps and evaluates: ~15 s on a quiet machine
REPO = Path(__file__).resolve().parents[1]


def short_run(cfg, steps: int):
    """The loop's step (forward, backward, AdamW, cosine schedule, clamp) for a few batches."""
    seed_everything(cfg.train.seed)
    module = CLIP_FAMILY.build_module(cfg)
    optimizer = build_optimizer(module, cfg.train)
    scheduler = cosine_schedule(optimizer, cfg.train.warmup_steps, steps)
    loader = torch.utils.data.DataLoader(
        CLIP_FAMILY.build_train_dataset(cfg),
        batch_size=cfg.train.batch_size,
        collate_fn=CLIP_FAMILY.build_collate(cfg),
        shuffle=True,
        drop_last=True,
    )
    module.train()
    for _, batch in zip(range(steps), loader, strict=False):
        losses, _ = module(batch)
        total_loss(losses).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        module.after_optimizer_step()
    return module, optimizer, scheduler


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run directory with two epoch checkpoints; the second holds the trained weights."""
    cfg = build_run_config(RUN)
    run_dir = tmp_path_factory.mktemp("runs") / cfg.name
    untrained = CLIP_FAMILY.build_module(cfg)
    module, optimizer, scheduler = short_run(cfg, steps=4)
    for epoch, source in ((0, untrained), (1, module)):
        directory = run_dir / f"checkpoint_epoch_{epoch:04d}"
        directory.mkdir(parents=True)
        state = {
            "module": source.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "step": 4 * epoch,
        }
        save_training_state(directory, cfg, 0, state, {"torch": torch.get_rng_state()})
    expected = CLIP_FAMILY.evaluate(module, cfg, torch.device("cpu"))
    return run_dir, expected


def test_run_directory_resolves_to_latest_checkpoint(trained_run):
    run_dir, _ = trained_run
    assert find_checkpoint(run_dir).name == "checkpoint_epoch_0001"
    assert find_checkpoint(run_dir / "checkpoint_epoch_0000").name == "checkpoint_epoch_0000"


def test_loaded_weights_reproduce_the_in_memory_evaluation(trained_run):
    run_dir, expected = trained_run
    result = evaluate_checkpoint(run_dir, device=torch.device("cpu"))
    assert result["epoch"] == 1 and result["step"] == 4
    assert set(result["metrics"]) == set(expected)
    for key, value in expected.items():
        assert math.isclose(result["metrics"][key], value, rel_tol=1e-5, abs_tol=1e-6), key
    # the untrained epoch-0 weights give other numbers: the weights really were loaded
    first = evaluate_checkpoint(run_dir / "checkpoint_epoch_0000", tasks=["structure"])
    assert first["metrics"]["structure/pair_cosine"] != pytest.approx(expected["structure/pair_cosine"])


def test_tasks_and_set_override_the_saved_config(trained_run):
    run_dir, _ = trained_run
    result = evaluate_checkpoint(run_dir, tasks=["retrieval"], overrides=["data.eval_size=32"])
    assert result["tasks"] == ["retrieval"]
    recall_names = {f"retrieval/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"retrieval/mean_recall"}
    assert set(result["metrics"]) == recall_names | {f"val/{name}" for name in recall_names}
    assert result["config"]["data"]["eval_size"] == 32
    recalls = result["metrics"]
    for direction in ("i2t", "t2i"):
        assert 0.0 <= recalls[f"retrieval/{direction}_r1"] <= recalls[f"retrieval/{direction}_r5"]
        assert recalls[f"retrieval/{direction}_r5"] <= recalls[f"retrieval/{direction}_r10"] <= 1.0


def test_cli_prints_table_and_writes_json(trained_run, tmp_path, capsys):
    run_dir, expected = trained_run
    out = tmp_path / "deep" / "metrics.json"
    assert main([str(run_dir), "--tasks", "zeroshot", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1" in printed and "validation" in printed and "test" in printed
    written = json.loads(out.read_text())["metrics"]
    # one row per metric: the validation value, then the test value
    row = next(line for line in printed.splitlines() if "zeroshot/synthetic_shapes/top1" in line)
    validation, test = (float(cell) for cell in row.replace("│", " ").split()[1:3])
    assert validation == pytest.approx(written["val/zeroshot/synthetic_shapes/top1"], abs=1e-4)
    assert test == pytest.approx(written["zeroshot/synthetic_shapes/top1"], abs=1e-4)
    key = "zeroshot/synthetic_shapes/top1"
    assert written[key] == pytest.approx(expected[key], rel=1e-5)
    assert written[f"val/{key}"] == pytest.approx(expected[f"val/{key}"], rel=1e-5)
    assert not list(out.parent.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{missing}"], "no such directory"),
        (["{empty}"], "neither a checkpoint directory nor a run directory"),
        (["{foreign}"], "not a checkpoint of this project"),
        (["{garbage}"], "unreadable checkpoint"),
        (["{run}", "--tasks", "zeroshot", "segmentation"], "--tasks: unknown task 'segmentation'"),
        (["{run}", "--tasks", "vqa"], "--tasks: vqa needs a fusion model"),
        (["{run}", "--set", "model.arch=RN50"], "--set model.arch: the model section is fixed"),
        (["{run}", "--set", "data.eval_size=2"], "--set.data.eval_size"),
        (["{run}", "--device", "abacus"], "--device: unknown torch device"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(trained_run, tmp_path, capsys, arguments, message):
    run_dir, _ = trained_run
    paths = {"run": run_dir, "missing": tmp_path / "nope", "empty": tmp_path / "empty"}
    paths["empty"].mkdir()
    for name, content in (("foreign", None), ("garbage", b"not a pickle")):
        directory = paths[name] = tmp_path / name
        directory.mkdir()
        (directory / "config.json").write_text(
            (run_dir / "checkpoint_epoch_0001" / "config.json").read_text()
        )
        if content is None:
            torch.save({"format": "someone-else/3", "module": {}}, directory / "state.pt")
        else:
            (directory / "state.pt").write_bytes(content)
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in arguments]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_module_entry_point_exits_2_in_a_subprocess(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "trainers.evaluate", str(tmp_path / "absent")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip() == f"error: {tmp_path / 'absent'}: no such directory"
