"""The one training loop, shared by every model family: `train_loop_per_worker` for Ray Train.

Read top to bottom: set-up (model, data, optimizer, resume), then epochs of steps, each epoch
ending with evaluation, a checkpoint and one report. Checkpoints are taken at epoch ends only, so
a run that dies mid-epoch repeats that epoch from its start and every epoch is reported exactly
once. Mid-epoch reports (`train.report_every_steps`) carry metrics only.

The loop runs on a Ray Train worker and reports to Ray Train, or, when a 1-worker study trial
trains in its own process, reports straight to that Tune trial (`tune_trial_session`), which then
persists the checkpoints and hands the latest back on restart.
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from trainers.checkpoint import load_training_state, save_training_state
from trainers.config import RunConfig, TrainConfig
from trainers.data.images import InputDataError
from trainers.family import TrainingModule, get_family, total_loss


class NonFiniteLossError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunStopped:
    """Why the loop stopped early on a failure that a retry would meet again (`fit()`'s `return_value`):
    the loop returns instead of raising, because Ray Train (2.60) retries every worker exception."""

    kind: Literal["nonfinite_loss", "bad_input"]
    message: str


def agree(failure: str | None, ended: bool = False) -> tuple[str | None, bool]:
    """All ranks learn whether any rank failed (and its message) and whether every rank's data has
    ended, so that they stop or go on together: one rank alone stopping would leave the others
    waiting in a collective. One small all-reduce; messages are gathered only on a failure."""
    if not (dist.is_available() and dist.is_initialized()):
        return failure, ended
    flags = torch.tensor([float(failure is not None), float(ended)])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    if flags[0].item() == 0:
        return None, bool(flags[1].item())  # as drop_last: the epoch ends with the shortest rank's data
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, failure)
    return next(message for message in messages if message is not None), True


def next_batch(batches) -> tuple[Any, str | None, bool]:
    """(batch, bad-input message, ended) for the next batch, agreed among ranks."""
    batch, failure, ended = None, None, False
    try:
        batch = next(batches)
    except StopIteration:
        ended = True
    except InputDataError as exc:
        failure = exc.reason
    failure, any_ended = agree(failure, ended)
    return batch, failure, any_ended


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(module: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; gains, biases and the logit scale are exempt from weight decay, as in open_clip."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(param)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": train.weight_decay}]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps)


def cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up, then cosine decay to 0 (open_clip's `cosine_lr`)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_loader(cfg: RunConfig, rank: int, world_size: int) -> tuple[DataLoader, DistributedSampler | None]:
    family = get_family(cfg.model.family)
    dataset = family.build_train_dataset(cfg)
    sampler = None
    if not isinstance(dataset, IterableDataset):
        # Our own sampler (not prepare_data_loader's) so the shuffle follows train.seed.
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.train.seed, drop_last=True
        )
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_loader_workers,
        collate_fn=family.build_collate(cfg),
        drop_last=True,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
    return loader, sampler


def autocast_context(cfg: RunConfig, device: torch.device):
    use_bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def check_finite(losses: dict[str, torch.Tensor], loss: torch.Tensor, step: int, epoch: int) -> str | None:
    """All ranks agree (one all-reduce) so they stop together; returns the message, or None."""
    bad = (~torch.isfinite(loss.detach())).float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item() == 0:
        return None
    terms = ", ".join(f"{k} = {v.item():.4g}" for k, v in losses.items() if not torch.isfinite(v).all())
    return f"non-finite loss at step {step} (epoch {epoch}): {terms or f'total = {loss.item():.4g}'}"


def quiet_ray_train_logs() -> None:
    """Ray Train logs every report's full metrics dict (and Tune every checkpoint's path) at INFO;
    the progress table says enough."""
    from ray.train._internal import storage as tune_storage
    from ray.train.v2._internal.execution import context, storage

    for module in (context, storage, tune_storage):
        module.logger.setLevel(logging.WARNING)


@dataclass(frozen=True)
class WorkerSession:
    """Where the loop runs and where it reports: a Ray Train worker, or a Tune trial's own process."""

    rank: int
    world_size: int
    device: torch.device
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module]
    report: Callable[..., None]  # report(metrics, checkpoint_dir=None, checkpoint_name=None)
    get_checkpoint: Callable[[], Any]


def ray_train_session() -> WorkerSession:
    context = ray.train.get_context()

    def report(metrics: dict[str, Any], checkpoint_dir: str | None = None, checkpoint_name: str | None = None):
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_name)

    return WorkerSession(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        prepare_model=ray.train.torch.prepare_model,  # DDP, on this worker's device
        report=report,
        get_checkpoint=ray.train.get_checkpoint,
    )


def tune_trial_session() -> WorkerSession:
    """One worker in the Tune trial's process: Tune persists the checkpoints and hands the latest back."""
    from ray import tune

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def report(metrics: dict[str, Any], checkpoint_dir: str | None = None, checkpoint_name: str | None = None):
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)

    return WorkerSession(rank=0, world_size=1, device=device, prepare_model=lambda module: module.to(device),
                         report=report, get_checkpoint=tune.get_checkpoint)


def train_loop_per_worker(loop_config: dict[str, Any], session: WorkerSession | None = None) -> str | None:
    """Ray Train entry point. `loop_config["run"]` is a RunConfig as JSON; it is validated here.

    Returns None, or why the run stopped early (`RunStopped`: a non-finite loss, bad input data)."""
    cfg = RunConfig.model_validate(loop_config["run"])
    quiet_ray_train_logs()
    session = session or ray_train_session()
    rank, world_size, device = session.rank, session.world_size, session.device
    family = get_family(cfg.model.family)

    seed_everything(cfg.train.seed)  # same initial weights on every rank
    module = family.build_module(cfg)
    optimizer = build_optimizer(module, cfg.train)
    loader, sampler = build_loader(cfg, rank, world_size)
    steps_per_epoch = max(1, len(loader) // cfg.train.grad_accum_steps)
    scheduler = cosine_schedule(optimizer, cfg.train.warmup_steps, steps_per_epoch * cfg.train.epochs)

    start_epoch, step = 0, 0
    checkpoint = session.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_training_state(Path(directory), cfg, rank)
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"] + 1, state["step"]
    seed_everything(cfg.train.seed * 1000 + rank + start_epoch * 7919)
    if checkpoint is not None and "rng" in state:
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])

    model = session.prepare_model(module)
    core: TrainingModule = model.module if hasattr(model, "module") else model
    if cfg.train.compile:
        model = torch.compile(model)
    writer = _tensorboard_writer(loop_config.get("tensorboard_dir"), rank)
    progress = _progress_bar(loop_config.get("show_progress", False), rank, cfg, steps_per_epoch, start_epoch)

    for epoch in range(start_epoch, cfg.train.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        model.train()
        # accumulated on the device: no host sync per term per step
        sums: dict[str, torch.Tensor | float] = defaultdict(float)
        num_batches, num_samples, started = 0, 0, time.perf_counter()
        batches = iter(loader)
        for micro_step in count():
            batch, bad_input, ended = next_batch(batches)
            if bad_input is not None:
                return RunStopped("bad_input", bad_input)
            if ended:
                break
            batch = to_device(batch, device)
            last_micro = (micro_step + 1) % cfg.train.grad_accum_steps == 0
            sync = nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with autocast_context(cfg, device):
                    losses, metrics = model(batch)
                loss = total_loss(losses)
                failure = check_finite(losses, loss, step, epoch)
                if failure is not None:
                    # Stop without raising: a retry from the checkpoint would fail again the same way.
                    return RunStopped("nonfinite_loss", failure)
                (loss / cfg.train.grad_accum_steps).backward()
            if last_micro:
                if cfg.train.grad_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                core.after_optimizer_step()
                step += 1
            num_batches += 1
            num_samples += batch_size_of(batch) * world_size
            sums["train/loss"] += loss.detach()
            for key, value in losses.items():
                sums[f"train/{key}"] += value.detach()
            for key, value in metrics.items():
                sums[f"train/{key}"] += value.detach() if isinstance(value, torch.Tensor) else float(value)
            if progress is not None and micro_step % 10 == 0:  # loss.item() syncs: not every step
                rate = num_samples / (time.perf_counter() - started)
                progress.update(10)
                progress.set_description(f"epoch {epoch} loss {loss.item():.3f} {rate:.0f} samples/s")
            if cfg.train.report_every_steps and last_micro and step % cfg.train.report_every_steps == 0:
                session.report({"epoch": epoch, "step": step, "train/loss": loss.item()})
        elapsed = time.perf_counter() - started

        epoch_metrics = {key: float(value) / max(1, num_batches) for key, value in sums.items()}
        epoch_metrics |= {
            "epoch": epoch,
            "step": step,
            "train/samples_per_s": num_samples / elapsed,
            "train/lr": scheduler.get_last_lr()[-1],
        }
        last_epoch = epoch == cfg.train.epochs - 1
        bad_input = None
        try:
            if rank == 0 and (cfg.eval.every_epoch or last_epoch):
                epoch_metrics |= family.evaluate(core, cfg, device)
        except InputDataError as exc:  # an evaluation image; the other ranks wait for rank 0 below
            bad_input = exc.reason
        if (bad_input := agree(bad_input)[0]) is not None:
            return RunStopped("bad_input", bad_input)
        if writer is not None:
            for key, value in epoch_metrics.items():
                writer.add_scalar(key, value, step)
            writer.flush()
        with tempfile.TemporaryDirectory() as directory:
            state = {"module": core.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step}
            rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
            save_training_state(Path(directory), cfg, rank, state if rank == 0 else None, rng)
            if rank == 0 and last_epoch and family.embedding_sample is not None:
                np.savez(Path(directory) / "embeddings.npz", **family.embedding_sample(core, cfg, device))
            session.report(epoch_metrics, directory, f"checkpoint_epoch_{epoch:04d}")
    if progress is not None:
        progress.close()
    return None


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def batch_size_of(batch: dict[str, torch.Tensor]) -> int:
    return len(next(iter(batch.values())))


def _tensorboard_writer(directory: str | None, rank: int):
    if directory is None or rank != 0:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(directory)


def _progress_bar(enabled: bool, rank: int, cfg: RunConfig, steps_per_epoch: int, start_epoch: int):
    if not enabled or rank != 0:
        return None
    from ray.experimental.tqdm_ray import tqdm

    total = steps_per_epoch * cfg.train.grad_accum_steps * (cfg.train.epochs - start_epoch)
    return tqdm(total=total, desc="training")
