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
from trainers.family import Family, TrainingModule, get_family, total_loss

# Micro-steps between the host's reads of the run's health (finiteness, bad input, end of data): in
# between, nothing in a step waits for the device or for another rank beyond DDP's own collectives.
CHECK_EVERY_STEPS = 32


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or inf: a retry from the last checkpoint would diverge the same way."""


@dataclass(frozen=True)
class RunStopped:
    """Why the loop stopped early on a failure that a retry would meet again, as `fit()`'s `return_value`:
    Ray Train (2.60) retries every worker exception, so the exception crosses the worker group as this
    value and `error()` raises it again on the other side (`trainers.train.fit_run`)."""

    kind: Literal["nonfinite_loss", "bad_input"]
    message: str

    def error(self) -> Exception:
        return NonFiniteLossError(self.message) if self.kind == "nonfinite_loss" else InputDataError(self.message)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def agree(failure: str | None, device: torch.device) -> str | None:
    """All ranks learn whether any rank failed, and one failing rank's message, so that they stop
    together: one rank alone stopping would leave the others waiting in a collective."""
    if not _distributed():
        return failure
    flag = torch.tensor([float(failure is not None)], device=device)  # on the device: NCCL reduces only those
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.tolist()[0] == 0:
        return None
    return _first_message(failure)


def _first_message(message: str | None) -> str:
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, message)
    return next(message for message in messages if message is not None)


class FinitenessWatch:
    """Whether every step's loss was finite, kept on the device so that no step waits for the host. It
    remembers the first non-finite step and its terms' values, for the message read at a check point."""

    def __init__(self, device: torch.device):
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.values: dict[str, torch.Tensor] = {}

    def observe(self, losses: dict[str, torch.Tensor], loss: torch.Tensor, step: int) -> None:
        values = {"total": loss.detach(), **{key: value.detach() for key, value in losses.items()}}
        first = ~torch.isfinite(values["total"]) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(first, step, self.first_bad_step)
        for key, value in values.items():
            value = value.float()
            self.values[key] = torch.where(first, value, self.values.get(key, value))

    def message(self, epoch: int) -> str | None:
        """Host read: the first non-finite step's message, or None."""
        step = int(self.first_bad_step.tolist())
        if step < 0:
            return None
        values = {key: value.tolist() for key, value in self.values.items()}
        terms = ", ".join(f"{key} = {value:.4g}" for key, value in values.items()
                          if key != "total" and not math.isfinite(value))
        terms = terms or f"total = {values['total']:.4g}"
        return f"non-finite loss at step {step} (epoch {epoch}): {terms}"


class LockstepBatches:
    """One epoch of this rank's batches, kept in step with the other ranks without a collective per batch.

    A batch that cannot be read (bad input) or an early end of this rank's data is remembered, not acted
    on: the rank goes on with a stand-in (its last good batch), so that it keeps meeting the other ranks
    in DDP's collectives, until the next check point (`agree_at_check_point`), where all ranks learn of
    it and stop together. The first micro-step of an epoch is always a check point, so a stand-in exists."""

    def __init__(self, loader: DataLoader):
        self.batches = iter(loader)
        self.length = len(loader)
        self.stand_in: Any = None
        self.failure: str | None = None
        self.ended = False

    def next(self) -> Any:
        if self.failure is None and not self.ended:
            try:
                self.stand_in = next(self.batches)
            except StopIteration:
                self.ended = True
            except InputDataError as exc:
                self.failure = exc.reason
        return self.stand_in


def agree_at_check_point(watch: FinitenessWatch, batches: LockstepBatches, epoch: int, first: bool,
                         device: torch.device) -> bool:
    """The one host read of a check point, agreed among ranks (one small all-reduce): raises
    NonFiniteLossError or InputDataError if any rank met one, else returns whether the epoch ended
    (as drop_last: it ends with the shortest rank's data). At an epoch's first check point the ranks
    also agree on its length (the shortest), so that they meet at the same check points after it."""
    flags = torch.stack([
        (watch.first_bad_step >= 0).float(),
        torch.tensor(float(batches.failure is not None), device=device),
        torch.tensor(float(batches.ended), device=device),
        torch.tensor(-float(batches.length), device=device),
    ])
    if _distributed():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    nonfinite, bad_input, ended, negative_length = flags.tolist()
    if first:
        batches.length = int(-negative_length)
    if nonfinite:
        message = watch.message(epoch)
        raise NonFiniteLossError(_first_message(message) if _distributed() else message)
    if bad_input:
        raise InputDataError(_first_message(batches.failure) if _distributed() else batches.failure)
    return bool(ended)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(module: TrainingModule, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; gains, biases and the logit scale are exempt from weight decay, as in open_clip. A tower
    with its own rate (`train.image_tower_lr_scale` / `text_tower_lr_scale` times `lr`) gets its own groups."""
    scale = {"image": train.image_tower_lr_scale, "text": train.text_tower_lr_scale, None: 1.0}
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = defaultdict(list)
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        groups[(train.lr * scale[module.tower_of(name)], exempt)].append(param)
    param_groups = [{"params": params, "lr": lr, "weight_decay": 0.0 if exempt else train.weight_decay}
                    for (lr, exempt), params in groups.items()]
    return torch.optim.AdamW(param_groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps, fused=True)


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


def train_loop_per_worker(loop_config: dict[str, Any], session: WorkerSession | None = None) -> RunStopped | None:
    """Ray Train entry point: `run_training`, with the failures a retry would meet again returned as a
    `RunStopped` instead of raised, because Ray Train retries every exception a worker raises."""
    try:
        run_training(loop_config, session or ray_train_session())
    except NonFiniteLossError as exc:
        return RunStopped("nonfinite_loss", str(exc))
    except InputDataError as exc:
        return RunStopped("bad_input", exc.reason)
    return None


def run_training(loop_config: dict[str, Any], session: WorkerSession) -> None:
    """The loop. `loop_config["run"]` is a RunConfig as JSON; it is validated here. Raises
    NonFiniteLossError (a loss term became NaN or inf) or InputDataError (data that cannot be read),
    on every rank at once; `loop_config["check_every_steps"]` overrides CHECK_EVERY_STEPS."""
    run = set_up(loop_config, session)
    for epoch in range(run.start_epoch, run.cfg.train.epochs):
        epoch_metrics = train_one_epoch(run, epoch)
        end_epoch(run, epoch, epoch_metrics)
    if run.progress is not None:
        run.progress.close()


@dataclass
class TrainingRun:
    """Everything the epochs share: what was built at set-up, and the optimizer step count."""

    cfg: RunConfig
    session: WorkerSession
    family: Family
    core: TrainingModule  # the module itself, without DDP or compilation around it
    model: torch.nn.Module  # what the steps call: `core` in DDP, compiled if asked
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader
    sampler: DistributedSampler | None
    start_epoch: int
    step: int
    check_every: int
    watch: FinitenessWatch
    writer: Any = None  # a TensorBoard SummaryWriter on rank 0, if asked
    progress: Any = None  # a progress bar on rank 0, if asked


# --------------------------------------------------------------------------- set-up


def set_up(loop_config: dict[str, Any], session: WorkerSession) -> TrainingRun:
    """Model, optimizer, data and schedule, restored from the session's checkpoint if it has one."""
    cfg = RunConfig.model_validate(loop_config["run"])
    quiet_ray_train_logs()
    family = get_family(cfg.model.family)

    seed_everything(cfg.train.seed)  # same initial weights on every rank
    module = family.build_module(cfg)
    optimizer = build_optimizer(module, cfg.train)
    loader, sampler = build_loader(cfg, session.rank, session.world_size)
    steps_per_epoch = max(1, len(loader) // cfg.train.grad_accum_steps)
    scheduler = cosine_schedule(optimizer, cfg.train.warmup_steps, steps_per_epoch * cfg.train.epochs)
    start_epoch, step = resume(session, cfg, module, optimizer, scheduler)

    model = session.prepare_model(module)
    core: TrainingModule = model.module if hasattr(model, "module") else model
    if cfg.train.compile:
        model = torch.compile(model)
    return TrainingRun(
        cfg=cfg, session=session, family=family, core=core, model=model, optimizer=optimizer,
        scheduler=scheduler, loader=loader, sampler=sampler, start_epoch=start_epoch, step=step,
        check_every=loop_config.get("check_every_steps", CHECK_EVERY_STEPS),
        watch=FinitenessWatch(session.device),
        writer=_tensorboard_writer(loop_config.get("tensorboard_dir"), session.rank),
        progress=_progress_bar(loop_config.get("show_progress", False), session.rank, cfg, steps_per_epoch,
                               start_epoch),
    )


def resume(session: WorkerSession, cfg: RunConfig, module: TrainingModule, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler) -> tuple[int, int]:
    """Load the session's checkpoint, if any, and seed this rank's random streams for the epochs to come;
    returns the epoch to start at and the optimizer steps taken so far."""
    start_epoch, step = 0, 0
    checkpoint = session.get_checkpoint()
    restored: dict[str, Any] = {}
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            restored = load_training_state(Path(directory), cfg, session.rank)
        module.load_state_dict(restored["module"])
        optimizer.load_state_dict(restored["optimizer"])
        scheduler.load_state_dict(restored["scheduler"])
        start_epoch, step = restored["epoch"] + 1, restored["step"]
    seed_everything(cfg.train.seed * 1000 + session.rank + start_epoch * 7919)
    if "rng" in restored:  # the streams as they were when the checkpoint was saved
        torch.set_rng_state(restored["rng"]["torch"])
        random.setstate(restored["rng"]["python"])
    return start_epoch, step


# --------------------------------------------------------------------------- one epoch


class EpochLog:
    """The epoch's running sums of losses and metrics, kept on the device (no host sync per term per
    step), and its sample count for the throughput."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.sums: dict[str, torch.Tensor | float] = defaultdict(float)
        self.num_batches = 0
        self.num_samples = 0
        self.started = time.perf_counter()

    def add(self, batch: dict[str, Any], loss: torch.Tensor, losses: dict[str, torch.Tensor],
            metrics: dict[str, Any]) -> None:
        self.num_batches += 1
        self.num_samples += batch_size_of(batch) * self.world_size
        self.sums["train/loss"] += loss.detach()
        for key, value in losses.items():
            self.sums[f"train/{key}"] += value.detach()
        for key, value in metrics.items():
            self.sums[f"train/{key}"] += value.detach() if isinstance(value, torch.Tensor) else float(value)

    def samples_per_s(self) -> float:
        return self.num_samples / (time.perf_counter() - self.started)

    def means(self) -> dict[str, float]:
        return {key: float(value) / max(1, self.num_batches) for key, value in self.sums.items()}


def train_one_epoch(run: TrainingRun, epoch: int) -> dict[str, Any]:
    """The epoch's micro-steps, with a check point every `check_every` of them and at the end; returns the
    epoch's mean losses and training metrics."""
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    if hasattr(run.loader.dataset, "set_epoch"):
        run.loader.dataset.set_epoch(epoch)
    run.model.train()
    log = EpochLog(run.session.world_size)
    batches = LockstepBatches(run.loader)
    loss, shown = None, 0
    for micro_step in count():
        batch = batches.next()
        if micro_step % run.check_every == 0 or micro_step >= batches.length:  # the epoch's last, too
            ended = agree_at_check_point(run.watch, batches, epoch, micro_step == 0, run.session.device)
            if run.progress is not None and loss is not None:  # the device is idle here: this read is free
                rate = log.samples_per_s()
                run.progress.update(micro_step - shown)
                run.progress.set_description(f"epoch {epoch} loss {loss.item():.3f} {rate:.0f} samples/s")
                shown = micro_step
            if ended:
                break
        batch = to_device(batch, run.session.device)
        loss, losses, metrics, stepped = train_micro_step(run, batch, micro_step)
        log.add(batch, loss, losses, metrics)
        report_every = run.cfg.train.report_every_steps
        if report_every and stepped and run.step % report_every == 0:
            run.session.report({"epoch": epoch, "step": run.step, "train/loss": loss.item()})
    samples_per_s = log.samples_per_s()
    return log.means() | {
        "epoch": epoch,
        "step": run.step,
        "train/samples_per_s": samples_per_s,
        "train/lr": run.scheduler.get_last_lr()[-1],
    }


def train_micro_step(run: TrainingRun, batch: dict[str, Any], micro_step: int
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any], bool]:
    """Forward and backward on one batch; the optimizer steps on the last of `grad_accum_steps` micro-steps
    (DDP synchronises gradients only then). Returns the total loss, its terms, the model's metrics and
    whether the optimizer stepped."""
    train = run.cfg.train
    last_micro = (micro_step + 1) % train.grad_accum_steps == 0
    sync = nullcontext() if last_micro or not hasattr(run.model, "no_sync") else run.model.no_sync()
    with sync:
        with autocast_context(run.cfg, run.session.device):
            losses, metrics = run.model(batch)
        loss = total_loss(losses)
        run.watch.observe(losses, loss, run.step)
        (loss / train.grad_accum_steps).backward()
    if last_micro:
        if train.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), train.grad_clip_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.core.after_optimizer_step()
        run.step += 1
    return loss, losses, metrics, last_micro


# --------------------------------------------------------------------------- end of an epoch


def end_epoch(run: TrainingRun, epoch: int, epoch_metrics: dict[str, Any]) -> None:
    """Evaluation (rank 0), TensorBoard, then a checkpoint reported with the epoch's metrics."""
    last_epoch = epoch == run.cfg.train.epochs - 1
    epoch_metrics |= evaluate_on_rank_0(run, last_epoch)
    if run.writer is not None:
        for key, value in epoch_metrics.items():
            run.writer.add_scalar(key, value, run.step)
        run.writer.flush()
    save_and_report(run, epoch, epoch_metrics, last_epoch)


def evaluate_on_rank_0(run: TrainingRun, last_epoch: bool) -> dict[str, float]:
    """The family's downstream evaluation on rank 0 (after every epoch, or only the last). Every rank meets
    in `agree` each epoch: the others wait there for rank 0, and all learn of an evaluation image it could
    not read."""
    metrics: dict[str, float] = {}
    bad_input = None
    try:
        if run.session.rank == 0 and (run.cfg.eval.every_epoch or last_epoch):
            metrics = run.family.evaluate(run.core, run.cfg, run.session.device)
    except InputDataError as exc:
        bad_input = exc.reason
    if (bad_input := agree(bad_input, run.session.device)) is not None:
        raise InputDataError(bad_input)
    return metrics


def save_and_report(run: TrainingRun, epoch: int, epoch_metrics: dict[str, Any], last_epoch: bool) -> None:
    """The epoch's checkpoint (weights, optimizer and schedule from rank 0; every rank's random streams; on
    the last epoch the report's embedding sample) handed to the session with the epoch's one report."""
    rank = run.session.rank
    with tempfile.TemporaryDirectory() as directory:
        saved = {"module": run.core.state_dict(), "optimizer": run.optimizer.state_dict(),
                 "scheduler": run.scheduler.state_dict(), "epoch": epoch, "step": run.step}
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        save_training_state(Path(directory), run.cfg, rank, saved if rank == 0 else None, rng)
        if rank == 0 and last_epoch and run.family.embedding_sample is not None:
            sample = run.family.embedding_sample(run.core, run.cfg, run.session.device)
            np.savez(Path(directory) / "embeddings.npz", **sample)
        run.session.report(epoch_metrics, directory, f"checkpoint_epoch_{epoch:04d}")


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
