"""No step of the training loop waits for the device: the loop's own code reads a tensor's value on the
host (`.item()`, `float()`, `bool()`, `.tolist()`, ...) only at its check points, every
`check_every_steps` micro-steps and at the epoch's end, and a non-finite loss found there names the
same step as a check after every step would."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from trainers.config import RunConfig, build_run_config
from trainers.loop import NonFiniteLossError, WorkerSession, run_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
# Host-side code: the data pipeline reads CPU tensors it made itself, before they go to the device.
HOST_SIDE = (REPO / "trainers" / "data",)
HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__", "__format__")
STEPS = 12
BATCH = 16


# every term, with its augmented views and independent heads: every code path of the loss
REGULARIZERS = {"gc": 0.5, "bb": 0.1, "dfs": 0.5, "inmodal": True}
MODELS = {
    "clip": {"family": "clip", "arch": "tiny-cnn"},
    "albef": {"family": "albef", "text_layers": 1, "fusion_layers": 1, "hidden_size": 32, "num_heads": 2,
              "patch_size": 8, "vision_layers": 1, "embed_dim": 16, "queue_size": 32},
}


def run_config(family: str = "clip", **train: Any) -> RunConfig:
    return build_run_config({
        "model": MODELS[family],
        "data": {"train_size": STEPS * BATCH, "eval_size": 64, "image_size": 32},
        "train": {"epochs": 1, "batch_size": BATCH, "lr": 1e-3, "warmup_steps": 2, **train},
        "regularizers": REGULARIZERS,
        "eval": {"tasks": ["structure"]},
    })  # fmt: skip


class StepCounter:
    """Counts forward calls (micro-steps) and, for each host read made by project code, the micro-steps
    done before it."""

    def __init__(self):
        self.forwards = 0
        self.reads: list[tuple[int, str]] = []

    def prepare_model(self, module: torch.nn.Module) -> torch.nn.Module:
        module.register_forward_pre_hook(lambda *_: setattr(self, "forwards", self.forwards + 1))
        return module


def session_for(counter: StepCounter) -> WorkerSession:
    return WorkerSession(rank=0, world_size=1, device=torch.device("cpu"), prepare_model=counter.prepare_model,
                         report=lambda *args, **kwargs: None, get_checkpoint=lambda: None)


@pytest.fixture
def host_reads(monkeypatch):
    """Records every host read of a tensor whose caller is project code outside the data pipeline."""
    counter = StepCounter()

    def patched(name: str):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = Path(sys._getframe(1).f_code.co_filename)
            if caller.is_relative_to(REPO) and not caller.is_relative_to(REPO / "tests") and not any(
                caller.is_relative_to(host) for host in HOST_SIDE
            ):
                counter.reads.append((counter.forwards, f"{name} at {caller.name}:{sys._getframe(1).f_lineno}"))
            return original(self, *args, **kwargs)

        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, patched(name))
    return counter


@pytest.mark.parametrize(("family", "check_every"), [("clip", 4), ("clip", 5), ("albef", 4)])
def test_training_steps_read_nothing_back_between_check_points(host_reads, family, check_every):
    run_training({"run": run_config(family).model_dump(mode="json"), "check_every_steps": check_every},
                 session_for(host_reads))
    assert host_reads.forwards == STEPS
    check_points = set(range(0, STEPS, check_every)) | {STEPS}  # every K micro-steps and the epoch's end
    steps_with_reads = {done for done, _ in host_reads.reads}
    between = [(done, where) for done, where in host_reads.reads if done not in check_points]
    assert not between, f"host reads inside steps: {between[:5]}"
    # the counter does see the check points' reads (and the epoch's end: metrics, evaluation)
    assert set(range(check_every, STEPS, check_every)) <= steps_with_reads
    assert STEPS in steps_with_reads


def test_a_non_finite_loss_is_found_at_the_step_it_happened():
    """A deferred check names the same first non-finite step as a check after every step."""
    messages = []
    for check_every in (1, 1000):
        cfg = run_config(lr=1e12, grad_clip_norm=None, warmup_steps=0)
        with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+ \(epoch 0\): .*_loss = ") as info:
            run_training({"run": cfg.model_dump(mode="json"), "check_every_steps": check_every},
                         session_for(StepCounter()))
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "at step 0 " not in messages[0]  # step 0 is finite; the blow-up comes from its update
