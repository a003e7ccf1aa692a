"""python -m trainers.data preview CONFIG.yaml --out preview.png [--set data.info_gap=1.0 ...]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainers.config import ConfigError, load_run_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.data")
    commands = parser.add_subparsers(dest="command", required=True)
    preview = commands.add_parser("preview", help="render samples and one item of each downstream task")
    preview.add_argument("config", help="run YAML (or a study YAML, whose base: is used)")
    preview.add_argument("--out", default="preview.png", help="PNG file to write")
    preview.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a configuration key (repeatable), e.g. --set data.info_gap=1.0")
    preview.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.config, args.overrides)
        from trainers.data import build_task_sets
        from trainers.data.preview import render_preview

        out = render_preview(config, build_task_sets(config.data), Path(args.out))
    except (ConfigError, ValueError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
