# vms serve in a container: Debian 12 with Python 3.11, ffmpeg and GStreamer's RTSP server (for the
# simulated cameras of stations without a camera URL). Footage, SQLite and caches live in /var/lib/vms.
# The second-generation console (console/, docs/design/console.md) is built with Debian's own Node.js in a
# stage of its own: the image that runs vms has no Node.
FROM debian:12-slim AS console
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY console/package.json console/package-lock.json ./console/
RUN cd console && npm ci --no-audit --no-fund
COPY console ./console
RUN mkdir -p vms/console && cd console && npm run build

FROM debian:12-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-pip python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp \
      gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad ffmpeg \
      fonts-noto-cjk ca-certificates \
      gcc python3-dev libavformat-dev libavcodec-dev libavutil-dev libavdevice-dev libavfilter-dev \
      libswscale-dev libswresample-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/vms
COPY pyproject.toml README.md ./
COPY vms ./vms
COPY --from=console /src/vms/console/next ./vms/console/next
COPY config ./config
COPY scripts/build_native.py ./scripts/
# Editable, as bootstrap.sh installs it: the native copier is built into the source tree.
RUN python3 -m venv /opt/vms/.venv && /opt/vms/.venv/bin/pip install --no-cache-dir -e '.[native]' \
 && /opt/vms/.venv/bin/python scripts/build_native.py

ENV VMS_DATA_DIR=/var/lib/vms/data \
    VMS_STORAGE__VOLUMES='[{name: main, path: /var/lib/vms/recordings}]' \
    VMS_API__HOST=0.0.0.0 \
    PATH=/opt/vms/.venv/bin:$PATH
VOLUME ["/var/lib/vms"]
EXPOSE 8080
# /api/health answers 503 when the recorder itself fails cameras (a camera thread hung, a worker silent)
# or the database is down; 200 with "degraded" when only cameras or their network are at fault.
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
  CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/api/health', timeout=8)"
# docker stop sends SIGTERM: vms finishes its segments within ingest.stop_seconds (8 s).
STOPSIGNAL SIGTERM

CMD ["sh", "-c", "vms db upgrade && vms stations import config/stations.yaml && exec vms serve"]
