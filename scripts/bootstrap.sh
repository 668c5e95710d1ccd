#!/usr/bin/env bash
# Installs everything vms needs on a fresh Debian machine (idempotent): system packages, then a venv.
# Used by both README commands, so a clone needs nothing done by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(
  ffmpeg
  gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-tools
  postgresql
  chromium
  fonts-noto-cjk
  poppler-utils
  e2fsprogs  # tests: an ext4 footage volume on a loop device that goes read-only (mkfs.ext4, e2fsck)
  python3-venv
  wrk  # scripts/bench_api.py --wrk: a C load generator
  sip-tester  # tests: SIPp acts as a GB/T 28181 device against the SIP server (tests/sipp/)
  # FFmpeg's C headers, for the native copier (scripts/build_native.py); it links to PyAV's own FFmpeg
  gcc python3-dev libavformat-dev libavcodec-dev libavutil-dev libavdevice-dev libavfilter-dev libswscale-dev libswresample-dev
)

missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "bootstrap: installing system packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${VMS_PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,native]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# The recorder's native copier and the GB28181 receiver's fast path: rebuilt when their sources or the
# installed PyAV change.
.venv/bin/python scripts/build_native.py

# The second-generation console (console/: Vue 3 + Element Plus, docs/design/console.md) is built with
# Node.js into vms/console/next/, which `vms serve` serves as plain files (no Node at run time). Debian's own
# nodejs and npm (18.x and 9.2 on Debian 12) are installed only when there is no node on the PATH, so a
# machine with another Node (nodesource's) keeps it. npm ci runs when the lock file changed, the build when
# any console source did (stamps, like the venv's): nothing is done when nothing changed.
if ! command -v node >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "bootstrap: installing Debian's nodejs and npm (to build the console)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
command -v npm >/dev/null || { echo "bootstrap: node is on the PATH but npm is not: install npm for it" >&2; exit 1; }
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || { echo "bootstrap: the console needs Node.js 18 or later, found $(node --version)" >&2; exit 1; }
lock_stamp=console/node_modules/.vms-installed-$(sha1sum console/package-lock.json | cut -c1-12)
if [ ! -f "$lock_stamp" ]; then
  (cd console && npm ci --no-audit --no-fund --loglevel=error)
  touch "$lock_stamp"
fi
console_hash=$(cd console && find . -path ./node_modules -prune -o -type f -print | LC_ALL=C sort \
  | xargs -d '\n' sha1sum | sha1sum | cut -c1-12)
build_stamp=vms/console/next/.stamp-$console_hash
if [ ! -f "$build_stamp" ]; then
  (cd console && npm run --silent build -- --logLevel warn)
  touch "$build_stamp"  # the build emptied the folder first, so older stamps are gone
fi
