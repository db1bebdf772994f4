#!/usr/bin/env bash
# Sets up a virtual environment from the project's own files and runs lint + the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
# systemd-analyze checks the unit file; install it where we can (Debian/Ubuntu as root).
if ! command -v systemd-analyze >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd >/dev/null \
    || echo "ops/test.sh: could not install systemd; the unit check will be skipped" >&2
fi
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
