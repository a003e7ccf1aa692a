"""`python -m trainers.train CONFIG.yaml [--set dotted.key=value ...] [--address ADDR]`

Runs one configuration under Ray Train (`TorchTrainer` over `trainers.loop.train_loop_per_worker`)
and writes the final metrics as JSON. Running the same command again with the same `name` and
`--storage` resumes the run from its last checkpoint (Ray Train restores by run name).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from trainers.config import ConfigError, RunConfig, load_run_config
from trainers.storage import absolute_location, is_uri, write_atomic

# epoch-end checkpoints kept per run (Ray Train's, or Tune's for a trial that trains in its own process)
CHECKPOINTS_KEPT = 2
# Ray Train's switch for its state actor, which the dashboard's Train view (`#/train`) reads
STATE_TRACKING = "RAY_TRAIN_ENABLE_STATE_TRACKING"
AUTH_TOKEN_HINT = "log in with the token that `ray get-auth-token` prints (the one in ~/.ray/auth_token)"


def build_torch_trainer(
    cfg: RunConfig,
    storage_path: str,
    run_name: str,
    callbacks: list[Any] = (),
    loop_options: dict[str, Any] | None = None,
):
    """The TorchTrainer for one run; a trial of a study and `trainers.train` both use it through `fit_run`."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from trainers.loop import train_loop_per_worker

    resources = cfg.resources
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.model_dump(mode="json"), **(loop_options or {})},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker, **({"GPU": 1} if resources.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            callbacks=list(callbacks),
        ),
    )


def fit_run(trainer):
    """`trainer.fit()`, raising what stopped the loop early (NonFiniteLossError, InputDataError), which
    crosses Ray Train's worker group as a returned `RunStopped` because Ray retries raised exceptions."""
    os.environ.setdefault(STATE_TRACKING, "1")  # read by trainer.fit(), here; Tune does not pass it on to trials
    result = trainer.fit()
    if result.return_value is not None:
        raise result.return_value.error()
    return result


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join a cluster (`--address`) or start a local one bound to 127.0.0.1, and say where its dashboard is."""
    import ray

    # Workers inherit these; keeps them from importing what they never use.
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The dashboard's Train view lists a run only when the process that starts it has this set: on a cluster
    # started here every Ray process inherits it (a joined cluster's trial processes get it in fit_run).
    os.environ.setdefault(STATE_TRACKING, "1")
    if address:
        context = ray.init(address=address, log_to_driver=True)
    else:
        # A laptop is not pre-empted: no watcher process per Train run (workers inherit the env).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # "local": a new cluster of our own; without it ray.init joins whatever cluster last wrote
        # /tmp/ray/ray_current_cluster (someone else's `ray start` or test cluster on the same machine)
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1")
    url = context.dashboard_url
    if url:
        port = url.rsplit(":", 1)[-1]
        print(f"Ray dashboard: http://{url} — {AUTH_TOKEN_HINT}; from a laptop: "
              f"ssh -L {port}:localhost:{port} {socket.gethostname()}, then open http://localhost:{port}", flush=True)


def input_error_of(exc: BaseException) -> ValueError | None:
    """The bad-input error (a ValueError naming file and row) behind a failed run, if that is why it failed."""
    for failure in getattr(exc, "worker_failures", {}).values():
        # Ray Train wraps a worker's exception together with its traceback string
        cause = getattr(failure, "_base_exc", failure)
        if isinstance(cause, ValueError):
            return cause
    return None


def check_data(cfg: RunConfig) -> None:
    """Every path the configuration names, checked here, before Ray starts, so that bad input fails
    fast in one line (file and row, or the key) rather than inside a worker: the training data (CSV
    columns and rows, every image it names; JSON entries; WebDataset shards and the epoch's split),
    the zero-shot sets (files, classes by name) and the annotation files (keys, splits, images)."""
    from trainers.data.pretrain import check_annotated_pretraining, check_webdataset
    from trainers.data.real_tasks import check_annotations, check_zeroshot_entry

    data, workers, batch = cfg.data, cfg.resources.num_workers, cfg.train.batch_size
    if data.dataset == "webdataset":
        check_webdataset(data, workers, batch)
    elif data.dataset in ("csv", "coco_json"):
        check_annotated_pretraining(data, workers, batch)
    if data.dataset != "synthetic":
        for i, entry in enumerate(data.zeroshot):
            check_zeroshot_entry(entry, f"data.zeroshot[{i}]")
        check_annotations(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="run YAML (or a study YAML: its base configuration is run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any key of the configuration, e.g. train.epochs=2 (repeatable)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    parser.add_argument("--storage", default="runs", help="directory or URI for checkpoints and metrics")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

    try:
        cfg = load_run_config(args.config, args.overrides)
        check_data(cfg)
    except (ConfigError, ValueError) as exc:  # a bad config, or a data set whose index does not read
        print(f"error: {exc}", file=sys.stderr)
        return 2

    storage = absolute_location(args.storage)
    init_ray(args.address)
    trainer = build_torch_trainer(
        cfg,
        storage,
        cfg.name,
        loop_options={
            "show_progress": not args.no_progress,
            "tensorboard_dir": None if is_uri(storage) else str(Path(storage) / cfg.name / "tensorboard"),
        },
    )
    from trainers.data.images import InputDataError
    from trainers.loop import NonFiniteLossError

    try:
        result = fit_run(trainer)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except InputDataError as exc:  # found by a worker while reading
        print(f"error: {exc.reason}", file=sys.stderr)
        return 2
    except Exception as exc:  # Ray wraps worker errors; show the cause in one line
        if args.debug:
            raise
        if (cause := input_error_of(exc)) is not None:
            print(f"error: {InputDataError(str(cause)).reason}", file=sys.stderr)
            return 2
        print(f"error: training failed: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, int | float | str)}
    out = Path("metrics.json") if is_uri(storage) else Path(storage) / cfg.name / "metrics.json"
    write_atomic(out, json.dumps(metrics, indent=2, sort_keys=True))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
                      if "/" in k and not k.startswith("train/")}, indent=1))
    print(f"metrics: {out}\ncheckpoint: {result.checkpoint.path if result.checkpoint else None}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
