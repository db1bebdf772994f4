#!/usr/bin/env bash
# Sets up a virtual environment from the project's own files and runs lint + the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
# systemd-analyze checks the unit file; journalctl and systemd-journal-remote build and read
# real journal files. Install them where we can (Debian/Ubuntu as root).
if { ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v journalctl >/dev/null 2>&1 \
     || [ ! -x /lib/systemd/systemd-journal-remote ]; } \
   && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      systemd systemd-journal-remote >/dev/null; } \
    || echo "ops/test.sh: could not install systemd tools; their tests will be skipped" >&2
fi
.venv/bin/ruff check .
.venv/bin/mypy ila_core collector forwarder queue_store ila_agent
.venv/bin/python -m pytest -q "$@"
