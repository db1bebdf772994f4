#!/usr/bin/env bash
# Sets up a virtual environment, then runs the reference receiver and the agent on 127.0.0.1
# with a sample auth log being written, and shows the lines as the receiver gets them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/python ops/demo.py "$@"
