#!/usr/bin/env bash
# The test command: installs what is missing (system packages, venv), starts PostgreSQL, runs every test.
# Extra arguments go to pytest (e.g. scripts/test.sh -k retention).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export VMS_TEST_POSTGRES_URL=${VMS_TEST_POSTGRES_URL:-$(scripts/postgres.sh)}
.venv/bin/ruff check vms tests scripts
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
