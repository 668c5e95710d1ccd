#!/usr/bin/env bash
# Starts Debian's PostgreSQL cluster and lets the current user in over the Unix socket (idempotent).
# Prints the URL of a server-level connection for the tests: they create and drop their own databases.
set -euo pipefail
ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)
[ -n "$ver" ] || { echo "postgres.sh: PostgreSQL is not installed (run scripts/bootstrap.sh)" >&2; exit 1; }
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! $SUDO pg_ctlcluster "$ver" main status >/dev/null 2>&1; then
  $SUDO pg_ctlcluster "$ver" main start >&2
fi
me=$(id -un)
for _ in $(seq 1 50); do
  $SUDO runuser -u postgres -- psql -qtAc "select 1" >/dev/null 2>&1 && break
  sleep 0.2
done
if ! $SUDO runuser -u postgres -- psql -qtAc "select 1 from pg_roles where rolname='$me'" | grep -q 1; then
  $SUDO runuser -u postgres -- psql -qc "create role \"$me\" superuser login" >&2
fi
echo "postgresql:///postgres?host=/var/run/postgresql"
