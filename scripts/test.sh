#!/usr/bin/env bash
# The whole test suite: install every extra, then ruff, mypy, the layer contract and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh "dev,all"
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check .; ruff format --check .
echo "== mypy"; mypy
echo "== import layers"; lint-imports
echo "== pytest"; python -m pytest -n 2 -q "$@"
