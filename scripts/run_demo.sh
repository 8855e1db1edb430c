#!/usr/bin/env bash
# The main job: sets everything up on a fresh machine, then runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${SWIN_EXT_VENV:-$(pwd)/.venv}
exec "$VENV/bin/python" -m swin_ext.demo "$@"
