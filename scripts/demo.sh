#!/usr/bin/env bash
# The main job: install fedcare and run the embedded heart-disease study.
# Extra arguments go to `fedcare demo` (e.g. --seeds 2 --out studies/quick).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh ""
exec .venv/bin/fedcare demo "$@"
