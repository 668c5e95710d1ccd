#!/usr/bin/env bash
# The run command: installs what is missing, migrates and imports the station catalogue, then runs
# `vms serve` on the embedded defaults (SQLite under data/, footage under recordings/, simulated
# cameras for stations without a camera URL). Extra arguments go to `vms serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/vms db upgrade
.venv/bin/vms stations import config/stations.yaml >/dev/null
exec .venv/bin/vms serve "$@"
