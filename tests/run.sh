#!/usr/bin/env bash
# The README's test command: installs everything the suite needs, then runs it.
# requirements-test.txt = the runtime pins (requirements.txt) + the test-only pins.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
python -m pip install --quiet --disable-pip-version-check --no-deps -e .
# Two workers: CI machines have 2 cores; each worker sees 8 fake CPU devices (conftest.py).
# tests/test_install.py also installs the runtime alone into a fresh venv and runs it there.
# loadgroup: the tests that start several jax.distributed processes share one worker (conftest.py).
exec python -m pytest -q -n 2 --dist loadgroup tests "$@"
