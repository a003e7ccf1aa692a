"""Samples/s of the project's CLIP training step against open_clip's own reference step, as ratios.

    python bench/train_step.py                      # CPU (tiny-vit, batch 128, fp32, 2 threads);
                                                    # plus CUDA (ViT-B-32, batch 1024, bf16) if present
    python bench/train_step.py --compile            # also torch.compile'd steps
    python bench/train_step.py --devices cpu --rounds 9 --profile

Ours is the body of trainers.loop's step without data loading: ClipTrainingModule's forward
(open_clip towers + LatentStructureLoss), total_loss, the on-device finiteness watch, backward, gradient
clipping, AdamW, the cosine schedule and after_optimizer_step (logit-scale clamp). The reference
is the body of open_clip_train's train_one_epoch: the same architecture from
open_clip.create_model, ClipLoss, backward, the same clipping, AdamW with open_clip's
weight-decay groups, its per-step schedule and the clamp. Both get the same pre-made random
batches and the same precision.

Cases:
  off: regularizers off, against the plain reference step. Target ratio >= 0.95.
  on:  GC, BB and DFS at weight 1, against a reference that also encodes the augmented view
       (image_aug, text_aug) with gradients: ClipLoss on the original pair plus ClipLoss on the
       augmented pair. (A loss on the original pair alone would skip the augmented view's
       backward, which no regularizer can.) Target ratio >= 0.95.

Timing: reference and ours alternate in rounds (A/B/A/B ...) of `--steps` steps after a
warm-up, and each side's median over rounds is kept, so load from other processes hits both
alike. `--profile` adds where the time goes: the regularizer maths alone (LatentStructureLoss
forward + backward on leaf features) against ClipLoss alone, and torch.profiler's top operators.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.loss import ClipLoss

from trainers.clip import MAX_LOGIT_SCALE, ClipTrainingModule, image_size_of
from trainers.config import RunConfig, build_run_config
from trainers.family import total_loss
from trainers.loop import FinitenessWatch, build_optimizer, cosine_schedule

TARGET_RATIO = 0.95
REGULARIZERS = {"off": {"gc": 0.0, "bb": 0.0, "dfs": 0.0}, "on": {"gc": 1.0, "bb": 1.0, "dfs": 1.0}}
GRAD_CLIP_NORM = 1.0
NUM_BATCHES = 2  # distinct pre-made batches, cycled


@dataclass(frozen=True)
class BenchSetting:
    device: str
    arch: str
    batch_size: int
    bf16: bool


CPU_SETTING = BenchSetting("cpu", "tiny-vit", 128, bf16=False)
CUDA_SETTING = BenchSetting("cuda", "ViT-B-32", 1024, bf16=True)

# wall: what a run sees; cpu: this process's CPU seconds (all its threads), far less sensitive
# to other processes on a shared machine. CPU only: CUDA work is not on the process's clock.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

Step = Callable[[dict[str, torch.Tensor]], None]


def run_config(setting: BenchSetting, case: str) -> RunConfig:
    return build_run_config(
        {
            "model": {"family": "clip", "arch": setting.arch},
            "train": {
                "batch_size": setting.batch_size,
                "precision": "bf16" if setting.bf16 else "fp32",
                "grad_clip_norm": GRAD_CLIP_NORM,
                "warmup_steps": 10,
            },
            "regularizers": REGULARIZERS[case],
        }
    )


def random_batches(setting: BenchSetting, device: torch.device, with_views: bool) -> list[dict]:
    """Pre-made normalized-image and tokenized-caption batches: no data loading is timed."""
    size = image_size_of(setting.arch)
    tokenizer = open_clip.get_tokenizer(setting.arch)
    generator = torch.Generator().manual_seed(0)
    words = ["red", "green", "blue", "small", "large", "circle", "square", "striped", "photo", "of", "a"]

    def captions() -> torch.Tensor:
        lengths = torch.randint(4, 12, (setting.batch_size,), generator=generator).tolist()
        picks = [torch.randint(0, len(words), (n,), generator=generator).tolist() for n in lengths]
        return tokenizer([" ".join(words[i] for i in pick) for pick in picks])

    def images() -> torch.Tensor:
        return torch.randn(setting.batch_size, 3, size, size, generator=generator)

    batches = []
    for _ in range(NUM_BATCHES):
        batch = {"image": images(), "text": captions()}
        if with_views:
            batch |= {"image_aug": images(), "text_aug": captions()}
        batches.append({key: value.to(device) for key, value in batch.items()})
    return batches


def autocast(setting: BenchSetting):
    return torch.autocast(setting.device, dtype=torch.bfloat16) if setting.bf16 else nullcontext()


def our_step(cfg: RunConfig, setting: BenchSetting, device: torch.device, compile_model: bool) -> Step:
    """trainers.loop's step body (one micro-step per optimizer step)."""
    torch.manual_seed(0)
    module = ClipTrainingModule(cfg).to(device).train()
    model = torch.compile(module) if compile_model else module
    optimizer = build_optimizer(module, cfg.train)
    scheduler = cosine_schedule(optimizer, cfg.train.warmup_steps, 10_000)
    step_count = [0]
    watch = FinitenessWatch(device)  # read back by the loop every CHECK_EVERY_STEPS, not per step

    def step(batch: dict[str, torch.Tensor]) -> None:
        with autocast(setting):
            losses, _ = model(batch)
        loss = total_loss(losses)
        watch.observe(losses, loss, step_count[0])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        module.after_optimizer_step()
        step_count[0] += 1

    return step


def open_clip_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip_train.main's groups: gains, biases and the logit scale get no weight decay."""

    def exclude(name: str, param: torch.nn.Parameter) -> bool:
        return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
    ]


def reference_step(
    cfg: RunConfig, setting: BenchSetting, device: torch.device, compile_model: bool, with_views: bool
) -> Step:
    """open_clip_train's train_one_epoch body; with views, the augmented pair is encoded and trained too."""
    torch.manual_seed(0)
    model = open_clip.create_model(cfg.model.arch).to(device).train()
    forward = torch.compile(model) if compile_model else model
    train = cfg.train
    optimizer = torch.optim.AdamW(
        open_clip_param_groups(model, train.weight_decay),
        lr=train.lr,
        betas=(train.beta1, train.beta2),
        eps=train.eps,
    )
    learning_rate = open_clip_cosine_lr(optimizer, train.lr, train.warmup_steps, 10_000)
    clip_loss = ClipLoss()
    step_count = [0]

    def step(batch: dict[str, torch.Tensor]) -> None:
        learning_rate(step_count[0])
        with autocast(setting):
            image_features, text_features, logit_scale = forward(batch["image"], batch["text"])
            loss = clip_loss(image_features, text_features, logit_scale)
            if with_views:
                image_aug, text_aug, logit_scale = forward(batch["image_aug"], batch["text_aug"])
                loss = loss + clip_loss(image_aug, text_aug, logit_scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        step_count[0] += 1

    return step


def open_clip_cosine_lr(optimizer: torch.optim.Optimizer, base_lr: float, warmup: int, total: int):
    """open_clip_train.scheduler.cosine_lr: sets every group's lr from the step number."""

    def assign(step: int) -> None:
        if step < warmup:
            lr = base_lr * (step + 1) / warmup
        else:
            lr = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) * base_lr
        for group in optimizer.param_groups:
            group["lr"] = lr

    return assign


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rounds(steps: dict[str, Step], batches: list[dict], device: torch.device, args) -> dict[str, float]:
    """Median samples/s per step function; the functions alternate round by round."""
    for step in steps.values():  # warm-up: allocator, kernels, compilation
        for i in range(args.warmup):
            step(batches[i % len(batches)])
    rates: dict[str, list[float]] = {name: [] for name in steps}
    batch_size = len(batches[0]["image"])
    clock = CLOCKS[args.clock]
    for _ in range(args.rounds):
        for name, step in steps.items():
            synchronize(device)
            started = clock()
            for i in range(args.steps):
                step(batches[i % len(batches)])
            synchronize(device)
            rates[name].append(args.steps * batch_size / (clock() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def measure_case(setting: BenchSetting, case: str, compile_model: bool, args) -> dict:
    device = torch.device(setting.device)
    cfg = run_config(setting, case)
    with_views = case == "on"
    batches = random_batches(setting, device, with_views)
    steps = {
        "reference": reference_step(cfg, setting, device, compile_model, with_views),
        "ours": our_step(cfg, setting, device, compile_model),
    }
    rates = timed_rounds(steps, batches, device, args)
    row = {"setting": setting, "case": case, "compiled": compile_model, **rates}
    row["ratio"] = rates["ours"] / rates["reference"]
    if args.profile:
        profile_case(cfg, setting, device, batches, steps)
    del steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


# ------------------------------------------------------------------------------------ profiling


def loss_only_ms(cfg: RunConfig, setting: BenchSetting, device: torch.device, repeats: int = 20) -> dict:
    """Milliseconds per forward + backward of the loss maths alone, on leaf features."""
    from trainers.regularizers import LatentStructureLoss

    embed_dim = open_clip.get_model_config(cfg.model.arch)["embed_dim"]
    names = [
        "image_aug",
        "text_aug",
        "image_independent",
        "text_independent",
        "image_independent_aug",
        "text_independent_aug",
    ]

    def feature() -> torch.Tensor:
        x = torch.nn.functional.normalize(torch.randn(setting.batch_size, embed_dim, device=device), dim=-1)
        return x.requires_grad_()

    v, t, logit_scale = feature(), feature(), torch.tensor(14.3, device=device, requires_grad=True)
    views = {name: feature() for name in names} if cfg.regularizers.dfs > 0 else {}
    criterion, clip_loss = LatentStructureLoss(cfg.regularizers), ClipLoss()
    timings = {}
    for name, fn in (
        ("ClipLoss", lambda: clip_loss(v, t, logit_scale)),
        ("LatentStructureLoss", lambda: total_loss(criterion(v, t, logit_scale, **views))),
    ):
        samples = []
        for _ in range(repeats):
            synchronize(device)
            started = time.perf_counter()
            with autocast(setting):
                loss = fn()
            loss.backward()
            synchronize(device)
            samples.append((time.perf_counter() - started) * 1e3)
        timings[name] = statistics.median(samples[2:])
    return timings


def profile_case(cfg: RunConfig, setting: BenchSetting, device: torch.device, batches, steps) -> None:
    from torch.profiler import ProfilerActivity, profile

    losses = loss_only_ms(cfg, setting, device)
    weights = cfg.regularizers
    print(
        f"\n[{setting.device} {cfg.model.arch} gc={weights.gc} bb={weights.bb} dfs={weights.dfs}] "
        "loss maths alone, forward + backward per step: "
        + ", ".join(f"{name} {ms:.2f} ms" for name, ms in losses.items())
    )
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name, step in steps.items():
        with profile(activities=activities) as prof:
            for i in range(3):
                step(batches[i % len(batches)])
            synchronize(device)
        print(f"--- {name}: top operators over 3 steps")
        print(prof.key_averages().table(sort_by=sort_key, row_limit=12, max_name_column_width=48))


# ------------------------------------------------------------------------------------ report


def print_rows(rows: list[dict]) -> bool:
    header = (
        f"{'device':<6} {'model':<9} {'batch':>5} {'prec':<4} {'compiled':<8} {'case':<4} "
        f"{'reference/s':>11} {'ours/s':>9} {'ratio':>6}  target"
    )
    print(header)
    all_hold = True
    for row in rows:
        setting, holds = row["setting"], row["ratio"] >= TARGET_RATIO
        all_hold &= holds
        print(
            f"{setting.device:<6} {setting.arch:<9} {setting.batch_size:>5} "
            f"{'bf16' if setting.bf16 else 'fp32':<4} {str(row['compiled']):<8} {row['case']:<4} "
            f"{row['reference']:>11.1f} {row['ours']:>9.1f} {row['ratio']:>6.3f}  "
            f">= {TARGET_RATIO} {'holds' if holds else 'MISSED'}"
        )
    return all_hold


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    parser.add_argument("--cases", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (median kept)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per step function")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or process CPU time (CPU runs on a busy machine)",
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    parser.add_argument("--profile", action="store_true", help="print where the time goes")
    parser.add_argument("--cpu-batch-size", type=int, default=CPU_SETTING.batch_size, help="CPU setting's batch")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if min(args.steps, args.rounds) < 1 or args.warmup < 0:
        parser.error("--steps and --rounds must be >= 1, --warmup >= 0")
    if args.clock == "cpu" and "cuda" in args.devices and torch.cuda.is_available():
        parser.error("--clock cpu: GPU work is not on the process's CPU clock; use --devices cpu")
    torch.set_num_threads(args.threads)

    settings = [dataclasses.replace(CPU_SETTING, batch_size=args.cpu_batch_size)] * ("cpu" in args.devices)
    if "cuda" in args.devices and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        settings.append(CUDA_SETTING)
    rows = []
    for setting in settings:
        for compile_model in [False, True] if args.compile else [False]:
            for case in args.cases:
                rows.append(measure_case(setting, case, compile_model, args))
                row = rows[-1]
                print(
                    f"{setting.device} {row['case']} compiled={compile_model}: reference "
                    f"{row['reference']:.1f}/s, ours {row['ours']:.1f}/s, ratio {row['ratio']:.3f}",
                    flush=True,
                )
    print(
        f"\nsamples/s ({args.clock} clock, {args.threads} threads), median of {args.rounds} rounds:"
    )
    all_hold = print_rows(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{**row, "setting": dataclasses.asdict(row["setting"]), "clock": args.clock} for row in rows], indent=1))
    return 0 if all_hold else 1


if __name__ == "__main__":
    raise SystemExit(main())
