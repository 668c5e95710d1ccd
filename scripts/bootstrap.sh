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
