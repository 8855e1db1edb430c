#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${SWIN_EXT_VENV:-$(pwd)/.venv}
exec "$VENV/bin/python" -m pytest -q "$@"
