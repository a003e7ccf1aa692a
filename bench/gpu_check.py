"""The prepared GPU check (issue 18), run by `bench/gpu_check.sh`: on one GPU in about 8 minutes, the
regularizer bench at N = 1024 and 4096, the train-step bench (open_clip ViT-B-32, batch 1024, bf16,
eager and compiled, ours against open_clip's own step), and a 2-trial `use_gpu: true` study of 1 epoch
to its report; then one table of every figure against its target.

    bash bench/gpu_check.sh                 # on a machine with a CUDA device
    bash bench/gpu_check.sh --dry-run       # the same stages on CPU at tiny sizes, eager only (plumbing)

Each stage runs as its own process with a time limit; its output is kept in `--out` (default
`runs/gpu_check/`): `<stage>.log` and the benches' rows as JSON. Exit 0 when every target holds (a dry
run: when every stage ran), else 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# targets of issue 18, for one H200-class GPU
REGULARIZER_MS_AT_1024 = 3.0
STEP_RATIO = 0.95
COMPILED_SAMPLES_PER_S = {"off": 6600.0, "on": 3100.0}
TOTAL_SECONDS = 8 * 60
REGULARIZER_TERMS = ("GC (+ aug views)", "BB", "DFS (+ aug views)", "all three (+ aug)")


@dataclass
class Row:
    check: str
    measured: str
    target: str
    verdict: str  # holds | MISSED | ran | FAILED


@dataclass(frozen=True)
class Stage:
    name: str
    command: list[str]
    timeout_s: int


def stages(dry_run: bool, out: Path) -> list[Stage]:
    python = sys.executable
    if dry_run:
        regularizers = ["--sizes", "64", "128", "--cpu-only", "--repeats", "2", "--threads", "2"]
        train_step = ["--devices", "cpu", "--cpu-batch-size", "16", "--steps", "1", "--rounds", "1", "--warmup", "1"]
        study = ["--set", "base.resources.use_gpu=false", "--set", "base.data.train_size=256",
                 "--set", "base.data.eval_size=64"]
    else:
        regularizers = ["--sizes", "1024", "4096", "--cuda-only", "--repeats", "7"]
        train_step = ["--devices", "cuda", "--steps", "3", "--rounds", "5", "--warmup", "3"]
        study = ["--set", "base.resources.use_gpu=true"]
    study_dir = out / "study"
    return [
        Stage("regularizers", [python, "-m", "bench.regularizers", *regularizers,
                               "--json", str(out / "regularizers.json")], 90),
        # compiled steps on the GPU only: inductor's C++ build of four CPU models would take the dry run ~15 min
        Stage("train_step", [python, "-m", "bench.train_step", *train_step, *(["--compile"] * (not dry_run)),
                             "--json", str(out / "train_step.json")], 270 if not dry_run else 600),
        # a worker group (not the trial's own process): Ray Train's process group (NCCL on a GPU) is exercised
        Stage("study", [python, "-m", "study.run", "search_spaces/gc.yaml", "--results", str(study_dir),
                        "--set", "base.train.epochs=1", "--set", "search.num_samples=1", "--set", "search.seeds=[0]",
                        "--set", "base.resources.in_trial_process=false", *study], 150 if not dry_run else 600),
    ]  # fmt: skip


def run_stage(stage: Stage, out: Path) -> tuple[int | None, float]:
    """(exit code or None on time-out, seconds)."""
    started = time.perf_counter()
    print(f"--- {stage.name}: {' '.join(stage.command[1:])}", flush=True)
    with open(out / f"{stage.name}.log", "w") as log:
        try:
            code = subprocess.run(stage.command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=stage.timeout_s).returncode
        except subprocess.TimeoutExpired:
            code = None
    seconds = time.perf_counter() - started
    print(f"    {'timed out' if code is None else f'exit {code}'} after {seconds:.0f} s "
          f"(log: {out / f'{stage.name}.log'})", flush=True)
    return code, seconds


def judged(holds: bool, dry_run: bool) -> str:
    return "ran" if dry_run else ("holds" if holds else "MISSED")


def regularizer_rows(path: Path, dry_run: bool) -> list[Row]:
    if not path.exists():
        return [Row("regularizers", "no result", f"<= {REGULARIZER_MS_AT_1024} ms at N=1024", "FAILED")]
    rows = []
    for result in json.loads(path.read_text()):
        if result["term"] not in REGULARIZER_TERMS:
            continue
        at_target = result["n"] == (128 if dry_run else 1024)
        target = f"<= {REGULARIZER_MS_AT_1024} ms" if at_target else "-"
        holds = result["ms"] <= REGULARIZER_MS_AT_1024 or not at_target
        rows.append(Row(f"{result['device']} {result['term']} fwd+bwd, N={result['n']}",
                        f"{result['ms']:.2f} ms ({result['ratio']:.2f}x ClipLoss)", target,
                        judged(holds, dry_run) if at_target else "ran"))
    return rows


def train_step_rows(path: Path, dry_run: bool) -> list[Row]:
    if not path.exists():
        return [Row("train step", "no result", f"ratio >= {STEP_RATIO}", "FAILED")]
    rows = []
    for result in json.loads(path.read_text()):
        setting = result["setting"]
        name = (f"{setting['device']} {setting['arch']} b{setting['batch_size']} "
                f"{'bf16' if setting['bf16'] else 'fp32'} {'compiled' if result['compiled'] else 'eager'} "
                f"regularizers {result['case']}")
        rows.append(Row(f"{name}: ours / open_clip", f"{result['ratio']:.3f}", f">= {STEP_RATIO}",
                        judged(result["ratio"] >= STEP_RATIO, dry_run)))
        if result["compiled"]:
            floor = COMPILED_SAMPLES_PER_S[result["case"]]
            rows.append(Row(f"{name}: ours samples/s", f"{result['ours']:.0f}", f">= {floor:.0f}",
                            judged(result["ours"] >= floor, dry_run)))
    return rows


def study_rows(code: int | None, seconds: float, out: Path) -> list[Row]:
    report = out / "study" / "report" / "report.html"
    trials = sorted((out / "study" / "trials").glob("*/result.json"))
    finished = sum(1 for path in trials if path.read_text().strip())
    ok = code == 0 and report.exists()
    return [Row("2-trial 1-epoch study to its report", f"{finished} trials reported, exit {code}, {seconds:.0f} s",
                "exit 0, report.html", "holds" if ok else "FAILED")]


def print_table(rows: list[Row]) -> None:
    widths = [max(len(getattr(row, field)) for row in rows) for field in ("check", "measured", "target")]
    print(f"\n{'check':<{widths[0]}}  {'measured':<{widths[1]}}  {'target':<{widths[2]}}  verdict")
    for row in rows:
        print(f"{row.check:<{widths[0]}}  {row.measured:<{widths[1]}}  {row.target:<{widths[2]}}  {row.verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bash bench/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every stage on CPU at tiny sizes")
    parser.add_argument("--out", default="runs/gpu_check", help="directory for the logs and JSON results")
    args = parser.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; `--dry-run` runs the same stages on CPU", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    if (out / "study").exists():
        print(f"error: {out / 'study'} exists (a previous check's results); pass another --out", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    device = "CPU (dry run: tiny sizes, targets not judged)" if args.dry_run else torch.cuda.get_device_name()
    print(f"GPU check on {device}, torch {torch.__version__}; logs in {out}", flush=True)

    started = time.perf_counter()
    outcomes = {stage.name: run_stage(stage, out) for stage in stages(args.dry_run, out)}
    total = time.perf_counter() - started
    rows = [*regularizer_rows(out / "regularizers.json", args.dry_run),
            *train_step_rows(out / "train_step.json", args.dry_run),
            *study_rows(*outcomes["study"], out)]
    for name in ("regularizers", "train_step"):
        code, seconds = outcomes[name]
        if code is None:
            rows.append(Row(f"{name} stage", f"timed out after {seconds:.0f} s", "finishes", "FAILED"))
    rows.append(Row("whole check", f"{total:.0f} s", f"<= {TOTAL_SECONDS} s",
                    judged(total <= TOTAL_SECONDS, args.dry_run)))
    print_table(rows)
    failed = [row for row in rows if row.verdict in ("FAILED", "MISSED")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
