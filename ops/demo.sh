#!/usr/bin/env bash
# The first command to run: sets up a virtual environment (.venv) from this repository, then
# runs the reference receiver and the agent on 127.0.0.1 with a sample auth log being written.
# Part-way through, the receiver goes down and the agent is killed with SIGKILL and restarted;
# at the end the demo checks that every line written arrived exactly once.
#   bash ops/demo.sh               30 s of writing (--seconds N for more, --short for 12 s)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "ops/demo.sh: needs Python >= 3.10 as $PYTHON (set PYTHON=/path/to/python3.x)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/python ops/demo.py "$@"
