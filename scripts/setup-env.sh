#!/usr/bin/env bash
# Create (or reuse) .venv and install fedcare with the given extras.
# Usage: scripts/setup-env.sh "dev,all"
# torch is pinned by constraints.txt (the CPU wheel); the project's own range stays loose.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
.venv/bin/python -m pip install --quiet -c constraints.txt -e "$spec"
