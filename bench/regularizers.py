"""Forward + backward time of each regularizer as a ratio to open_clip's ClipLoss at the same batch size.

    python -m bench.regularizers                  # N in {256, 1024, 4096}, D = 512, CPU (+ CUDA if present)
    python -m bench.regularizers --sizes 1024 --threads 2 --compile

Every case starts from leaf features that require grad, so the ClipLoss row includes building its
logits, and each regularizer row includes everything it computes. Times are medians of repeats.
On CUDA the extra peak memory over the inputs is printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from trainers.regularizers import (
    _finite_check,
    brownian_bridge_loss,
    feature_separation_loss,
    geometric_consistency_loss,
)

Features = dict[str, torch.Tensor]
NAMES = ("v", "t", "v_aug", "t_aug", "u", "w", "u_aug", "w_aug")


def make_features(n: int, d: int, device: torch.device) -> Features:
    generator = torch.Generator(device=device).manual_seed(0)
    return {
        name: F.normalize(torch.randn(n, d, device=device, generator=generator), dim=1).requires_grad_()
        for name in NAMES
    }


def cases(compile_losses: bool) -> dict[str, Callable[[Features], torch.Tensor]]:
    clip_loss = ClipLoss()
    wrap = torch.compile if compile_losses else (lambda fn: fn)
    gc, bb, dfs = wrap(geometric_consistency_loss), wrap(brownian_bridge_loss), wrap(feature_separation_loss)

    def all_three(f: Features) -> torch.Tensor:
        return (
            gc(f["v"], f["t"], f["v_aug"], f["t_aug"])
            + bb(f["v"], f["t"], f["v_aug"])
            + dfs(f["v"], f["t"], f["u"], f["w"], f["u_aug"], f["w_aug"])
        )

    return {name: training_path(fn) for name, fn in {
        "ClipLoss": lambda f: clip_loss(f["v"], f["t"], 100.0),
        "GC (L_GC only)": lambda f: gc(f["v"], f["t"]),
        "GC (+ aug views)": lambda f: gc(f["v"], f["t"], f["v_aug"], f["t_aug"]),
        "BB": lambda f: bb(f["v"], f["t"], f["v_aug"]),
        "DFS (no aug)": lambda f: dfs(f["v"], f["t"], f["u"], f["w"]),
        "DFS (+ aug views)": lambda f: dfs(f["v"], f["t"], f["u"], f["w"], f["u_aug"], f["w_aug"]),
        "all three (+ aug)": all_three,
    }.items()}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Clock = Callable[[], float]


def forward_backward_seconds(fn: Callable[[Features], torch.Tensor], features: Features, clock: Clock) -> float:
    device = features["v"].device
    for x in features.values():
        x.grad = None
    _synchronize(device)
    start = clock()
    fn(features).backward()
    _synchronize(device)
    return clock() - start


def training_path(fn: Callable[[Features], torch.Tensor]) -> Callable[[Features], torch.Tensor]:
    """`fn` as LatentStructureLoss runs it: without the functional forms' input validation (a float64 sum
    per argument and a host read), which a training step never pays."""

    def unchecked(features: Features) -> torch.Tensor:
        token = _finite_check.set(False)
        try:
            return fn(features)
        finally:
            _finite_check.reset(token)

    return unchecked


def median_timings(
    timed_cases: dict[str, Callable[[Features], torch.Tensor]], features: Features, repeats: int, clock: Clock
) -> dict[str, float]:
    """Median seconds per case; the cases take turns in every round so that load shifts hit all alike."""
    for fn in timed_cases.values():  # warm-up (and compilation)
        forward_backward_seconds(fn, features, clock)
    samples: dict[str, list[float]] = {name: [] for name in timed_cases}
    for _ in range(repeats):
        for name, fn in timed_cases.items():
            samples[name].append(forward_backward_seconds(fn, features, clock))
    return {name: statistics.median(values) for name, values in samples.items()}


def peak_extra_memory_mib(fn: Callable[[Features], torch.Tensor], features: Features) -> float | None:
    device = features["v"].device
    if device.type != "cuda":
        return None
    for x in features.values():
        x.grad = None
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn(features).backward()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20


def run(
    device: torch.device, sizes: list[int], dim: int, repeats: int, compile_losses: bool, clock: Clock
) -> list[dict]:
    """Prints the table; returns its rows (device, N, term, ms, ratio to ClipLoss, extra MiB)."""
    clock_name = "CPU seconds" if clock is time.process_time else "wall"
    print(f"\n{device.type.upper()}  D={dim}  threads={torch.get_num_threads()}  compile={compile_losses}  "
          f"{clock_name}, median of {repeats}  (forward + backward, ms; ratio to ClipLoss at the same N)")
    header = f"{'term':<20}" + "".join(f"{'N=' + str(n):>26}" for n in sizes)
    print(header)
    results: dict[str, list[str]] = {}
    rows: list[dict] = []
    timed_cases, eager_cases = cases(compile_losses), cases(False)
    for n in sizes:
        features = make_features(n, dim, device)
        timings = median_timings(timed_cases, features, repeats, clock)
        for name, seconds in timings.items():
            ratio = seconds / timings["ClipLoss"]
            memory = peak_extra_memory_mib(eager_cases[name], features)
            cell = f"{seconds * 1e3:8.2f} ms {ratio:5.2f}x" + (f" {memory:5.0f}MiB" if memory is not None else "")
            results.setdefault(name, []).append(cell)
            rows.append({"device": device.type, "n": n, "term": name, "ms": seconds * 1e3, "ratio": ratio,
                         "extra_mib": memory, "compiled": compile_losses})
    for name, cells in results.items():
        print(f"{name:<20}" + "".join(f"{cell:>26}" for cell in cells))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the CPU runs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the regularizers")
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--cpu-time", action="store_true", help="time CPU runs in process CPU seconds")
    parser.add_argument("--cuda-only", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # process CPU seconds cannot be inflated by other jobs on a shared machine (a work measure
    # with --threads 1); wall time otherwise, and always on CUDA
    cpu_clock = time.process_time if args.cpu_time else time.perf_counter
    rows = []
    if not args.cuda_only:
        rows += run(torch.device("cpu"), args.sizes, args.dim, args.repeats, args.compile, cpu_clock)
    if torch.cuda.is_available() and not args.cpu_only:
        rows += run(torch.device("cuda"), args.sizes, args.dim, args.repeats, args.compile, time.perf_counter)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
