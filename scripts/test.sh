#!/usr/bin/env bash
# The test command: installs what is missing (system packages, venv), starts PostgreSQL, runs every test.
# Extra arguments go to pytest (e.g. scripts/test.sh -k retention).
# --fast (first argument): the unit-level tier, for feedback in under a minute before the full run: lint,
# then every test not marked slow, rtsp or postgres (no RTSP simulator, no vms serve or other vms
# processes, no browser, no PostgreSQL). CI runs the full command, without --fast.
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi
scripts/bootstrap.sh
.venv/bin/ruff check vms tests scripts
.venv/bin/mypy  # configured in pyproject.toml ([tool.mypy]): vms/, at zero errors
if [ "$fast" = 1 ]; then
  exec env VMS_TEST_FAST=1 .venv/bin/python -m pytest -q -p no:cacheprovider -n auto \
    -m "not slow and not rtsp and not postgres" "$@"
fi
export VMS_TEST_POSTGRES_URL=${VMS_TEST_POSTGRES_URL:-$(scripts/postgres.sh)}
# The full run is mostly waiting (real cameras, timers, restarts: 24 min on one worker for 8 min of CPU),
# so it runs test files on VMS_TEST_WORKERS workers (default 4, on 2 cores too); 1 runs them one by one.
workers=${VMS_TEST_WORKERS:-4}
if [ "$workers" -gt 1 ]; then
  set -- -n "$workers" --dist loadfile --no-loadscope-reorder "$@"  # in collection order: longest files first
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
