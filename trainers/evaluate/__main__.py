"""`python -m trainers.evaluate CHECKPOINT [--tasks ...] [--set dotted.key=value ...] [--out FILE.json]`

Evaluates a saved checkpoint on downstream tasks. CHECKPOINT is a checkpoint directory
(runs/<name>/checkpoint_epoch_NNNN) or a run directory, whose latest checkpoint is used. The
family module is rebuilt from the configuration saved with the checkpoint, its weights are
loaded (`torch.load(weights_only=True)`), and the tasks run on CUDA when available, else CPU.
Bad input (missing directory, foreign or unreadable checkpoint, unknown task) is one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from trainers.checkpoint import CONFIG_FILE, STATE_FILE, read_checkpoint
from trainers.config import EVAL_TASKS, ConfigError, RunConfig, build_run_config, parse_override, set_dotted

# Tasks that need a fusion encoder; two-tower families cannot run them.
FUSION_TASKS = ("vqa", "nlvr", "ve")
# Sections that decide the module's parameters: changing them would not match the saved weights.
FROZEN_SECTIONS = ("model", "regularizers")


def find_checkpoint(path: Path) -> Path:
    """A checkpoint directory as given, or a run directory's latest (highest-numbered) checkpoint."""
    if not path.is_dir():
        raise ValueError(f"{path}: no such directory")
    if (path / STATE_FILE).is_file() or (path / CONFIG_FILE).is_file():
        return path
    # zero-padded epoch numbers (checkpoint_epoch_0007) sort in training order
    candidates = sorted(p for p in path.glob("checkpoint_*") if (p / STATE_FILE).is_file())
    if not candidates:
        raise ValueError(
            f"{path}: neither a checkpoint directory nor a run directory with checkpoint_* in it"
        )
    return candidates[-1]


def evaluation_config(saved: RunConfig, tasks: list[str] | None, overrides: list[str]) -> RunConfig:
    """The saved configuration with the requested tasks and `--set` overrides applied, validated."""
    tree = saved.model_dump(mode="json")
    if tasks is not None:
        unknown = [task for task in tasks if task not in EVAL_TASKS]
        if unknown:
            raise ValueError(
                f"--tasks: unknown task {unknown[0]!r} (expected one of {', '.join(EVAL_TASKS)})"
            )
        if saved.model.family != "albef" and (fusion := [t for t in tasks if t in FUSION_TASKS]):
            raise ValueError(
                f"--tasks: {fusion[0]} needs a fusion model (albef); this checkpoint is {saved.model.family}"
            )
        tree["eval"]["tasks"] = tasks
    for item in overrides:
        key, value = parse_override(item)
        if key.split(".")[0] in FROZEN_SECTIONS:
            raise ValueError(
                f"--set {key}: the {key.split('.')[0]} section is fixed by the checkpoint's weights"
            )
        set_dotted(tree, key, value)
    if saved.model.family == "clip":  # weights come from the checkpoint: never fetch a pretrained tag again
        tree["model"]["pretrained"] = None
    return build_run_config(tree, prefix="--set")


def load_module(state: dict[str, Any], cfg: RunConfig, device: torch.device) -> torch.nn.Module:
    from trainers.family import get_family

    module = get_family(cfg.model.family).build_module(cfg)
    try:
        module.load_state_dict(state["module"])
    except (KeyError, RuntimeError) as exc:
        first_line = str(exc).splitlines()[0]
        raise ValueError(f"checkpoint weights do not fit the saved configuration ({first_line})") from None
    return module.to(device).eval()


# where each task's data comes from on real data, for the message about a task without data
TASK_SOURCES = {
    "zeroshot": "data.zeroshot", "retrieval": "data.annotations.retrieval", "linear_probe": "data.zeroshot",
    "kshot": "data.zeroshot", "structure": "data.annotations.retrieval", "vqa": "data.annotations.vqa_train/vqa_test",
    "nlvr": "data.annotations.nlvr_train/nlvr_test", "ve": "data.annotations.ve_train/ve_test",
}


def tasks_without_data(cfg: RunConfig) -> list[str]:
    """The configuration's eval.tasks whose task sets are empty (real data without those files)."""
    from trainers.data import build_task_sets

    sets = build_task_sets(cfg.data)
    has_data = {
        "zeroshot": bool(sets.zeroshot), "retrieval": sets.retrieval is not None,
        "linear_probe": bool(sets.probes), "kshot": bool(sets.probes),
        "structure": sets.retrieval is not None or any(probe.test_captions for probe in sets.probes),
        "vqa": sets.vqa is not None, "nlvr": sets.nlvr is not None, "ve": sets.ve is not None,
    }
    return [task for task in cfg.eval.tasks if not has_data[task]]


def evaluate_checkpoint(
    path: Path, tasks: list[str] | None = None, overrides: list[str] = (), device: torch.device | None = None
) -> dict[str, Any]:
    """Evaluate a checkpoint (or a run's latest); returns its identity and the metrics."""
    from trainers.family import get_family

    directory = find_checkpoint(path)
    state, saved = read_checkpoint(directory)
    cfg = evaluation_config(saved, tasks, list(overrides))
    missing = tasks_without_data(cfg)
    if missing and len(missing) == len(cfg.eval.tasks):
        raise ValueError(f"--tasks: no data for {', '.join(missing)} in this checkpoint's configuration (set "
                         f"{', '.join(dict.fromkeys(TASK_SOURCES[t] for t in missing))} with --set)")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = load_module(state, cfg, device)
    metrics = get_family(cfg.model.family).evaluate(module, cfg, device)
    return {
        "checkpoint": str(directory.resolve()),
        "family": cfg.model.family,
        "arch": cfg.model.architecture(),
        "epoch": state.get("epoch"),
        "step": state.get("step"),
        "tasks": [task for task in cfg.eval.tasks if task not in missing],
        "tasks_without_data": missing,
        "metrics": {key: float(value) for key, value in sorted(metrics.items())},
        "config": cfg.model_dump(mode="json"),  # what was evaluated, overrides included
    }


def write_json_atomically(payload: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    tmp.replace(out)  # readers never see a half-written file


def print_table(result: dict[str, Any]) -> None:
    """One row per metric: its value on the validation split (val/<metric>, what studies select on)
    beside its value on the test split (what reports show); "-" where a split has no value."""
    from rich.console import Console
    from rich.table import Table

    from trainers.evaluate.names import VALIDATION_PREFIX

    metrics = result["metrics"]
    names = sorted({name.removeprefix(VALIDATION_PREFIX) for name in metrics})
    title = f"{result['family']}/{result['arch']} epoch {result['epoch']} step {result['step']}"
    table = Table("metric", "validation", "test", title=title, caption=result["checkpoint"])
    for name in names:
        validation, test = metrics.get(f"{VALIDATION_PREFIX}{name}"), metrics.get(name)
        table.add_row(name, *("-" if value is None else f"{value:.4f}" for value in (validation, test)))
    Console().print(table)


def parse_device(name: str | None) -> torch.device | None:
    if name is None:
        return None
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: unknown torch device {name!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory, or a run directory (its latest)")
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        metavar="TASK",
        help=f"tasks to run (default: the saved eval.tasks); any of {', '.join(EVAL_TASKS)}",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the saved configuration, e.g. data.eval_size=512 (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="write the metrics as JSON here")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

    try:
        device = parse_device(args.device)
        result = evaluate_checkpoint(args.checkpoint, args.tasks, args.overrides, device)
    except (ValueError, ConfigError) as exc:  # ConfigError is a ValueError; named for the reader
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result["tasks_without_data"]:
        print(f"note: no data for {', '.join(result['tasks_without_data'])} (not evaluated)", file=sys.stderr)
    print_table(result)
    if args.out is not None:
        write_json_atomically(result, args.out)
        print(f"metrics: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
