#!/usr/bin/env bash
# The prepared GPU check of issue 18: regularizer bench, train-step bench (eager and compiled, bf16),
# a 2-trial use_gpu study to its report, and one table (bench/gpu_check.py says what each target is).
#   bash bench/gpu_check.sh [--dry-run] [--out DIR]
# Uses the active Python if it has the project installed, else installs it from this repository
# (pyproject.toml) into a virtual environment beside it, .venv-gpu-check/.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! "$python" -c "import trainers, study, analysis, ray, open_clip, optuna" 2>/dev/null; then
  echo "installing the project from $(pwd)/pyproject.toml into .venv-gpu-check/" >&2
  "$python" -m venv --system-site-packages .venv-gpu-check
  python=.venv-gpu-check/bin/python
  "$python" -m pip install --quiet -e .
fi
exec "$python" -m bench.gpu_check "$@"
