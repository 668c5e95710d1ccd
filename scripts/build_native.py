#!/usr/bin/env python3
"""Build vms/recording/native_copy.pyx against the PyAV installed in this venv, and
vms/gb28181/rtp_native.pyx (plain C: the GB28181 media receiver's steady state), then check them.

Cython needs PyAV's declarations of FFmpeg (`include/*.pxd`, shipped in PyAV's sdist, not its wheel):
they are fetched once from the package index for the installed PyAV version. The C compiler needs
FFmpeg's headers: Debian's (libavformat-dev, installed by bootstrap.sh). The module only touches
AVPacket's leading fields and AVFormatContext's `pb`, and calls functions whose signatures have not
changed since FFmpeg 5, and it links against the FFmpeg that PyAV bundles (the one loaded at run
time); the check below reads a real packet both ways, and writes a file both with the module's header
and PyAV's, and refuses the build if they differ.

Usage: .venv/bin/python scripts/build_native.py [--force]   (bootstrap.sh runs it; a no-op when up to date)
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "vms" / "recording" / "native_copy.pyx"
RTP_SOURCE = REPO / "vms" / "gb28181" / "rtp_native.pyx"
BUILD = REPO / "build" / "native"
LIBS = ("avformat", "avcodec", "avutil")


def pyav_include(version: str) -> Path:
    """PyAV's `include/` folder for `version`, from its sdist on the package index (cached)."""
    dest = BUILD / f"pyav-{version}"
    if (dest / "include" / "libav.pxd").exists():
        return dest / "include"
    # The configured index first (a mirror may hold wheels only), then PyPI's.
    indexes = [i.rstrip("/") for i in (os.environ.get("PIP_INDEX_URL"), "https://pypi.org/simple") if i]
    match = None
    for index in indexes:
        try:
            page = urllib.request.urlopen(f"{index}/av/", timeout=60).read().decode()
        except OSError as exc:
            print(f"build_native: {index}: {exc}", file=sys.stderr)
            continue
        match = re.search(rf'href="([^"#]*av-{re.escape(version)}\.tar\.gz)(?:#sha256=([0-9a-f]+))?"', page)
        if match is not None:
            break
    if match is None:
        sys.exit(f"build_native: no sdist of av {version} on {', '.join(indexes)}")
    url, sha256 = match.group(1), match.group(2)
    if url.startswith("/") or not re.match(r"https?:", url):
        url = urllib.parse.urljoin(f"{index}/av/", url)
    data = urllib.request.urlopen(url, timeout=120).read()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        sys.exit(f"build_native: {url}: checksum mismatch")
    prefix = f"av-{version}/include/"
    # Extracted beside, then renamed: an interrupted run leaves no half cache that looks complete.
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        for m in members:
            target = partial / "include" / m.name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(m).read())
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest / "include"


def bundled_libraries() -> tuple[Path, list[str]]:
    import av

    libs_dir = Path(av.__file__).resolve().parent.parent / "av.libs"
    names = []
    for lib in LIBS:
        found = sorted(libs_dir.glob(f"lib{lib}-*.so*"))
        if not found:
            sys.exit(f"build_native: lib{lib} not found in {libs_dir}")
        names.append(found[0].name)
    return libs_dir, names


def build() -> Path:
    import av

    include = pyav_include(av.__version__)
    BUILD.mkdir(parents=True, exist_ok=True)
    c_file = BUILD / "native_copy.c"
    subprocess.run([sys.executable, "-m", "cython", "-3", "-I", str(include), str(SOURCE), "-o", str(c_file)],
                   check=True)
    libs_dir, names = bundled_libraries()
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    out = SOURCE.with_name("native_copy" + suffix)
    tmp = out.with_suffix(".tmp")
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-w", f"-I{sysconfig.get_paths()['include']}", str(c_file),
           "-o", str(tmp), f"-L{libs_dir}", *[f"-l:{n}" for n in names], f"-Wl,-rpath,{libs_dir}"]
    subprocess.run(cmd, check=True)
    tmp.replace(out)
    return out


def build_rtp() -> Path:
    """vms/gb28181/rtp_native.pyx: no FFmpeg, only the C library."""
    BUILD.mkdir(parents=True, exist_ok=True)
    c_file = BUILD / "rtp_native.c"
    subprocess.run([sys.executable, "-m", "cython", "-3", str(RTP_SOURCE), "-o", str(c_file)], check=True)
    out = RTP_SOURCE.with_name("rtp_native" + sysconfig.get_config_var("EXT_SUFFIX"))
    tmp = out.with_suffix(".tmp")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-w", f"-I{sysconfig.get_paths()['include']}", str(c_file),
                    "-o", str(tmp)], check=True)
    tmp.replace(out)
    return out


def check_rtp() -> None:
    """Three RTP packets over loopback UDP: the in-order two reach the pipe, the third is left to Python."""
    import socket

    from vms.gb28181 import rtp_native
    from vms.gb28181.rtp import build_rtp

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    read_fd, write_fd = os.pipe()
    wake = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        tx.bind(("127.0.0.1", 0))
        os.set_blocking(write_fd, False)
        fast = rtp_native.FastPath(False, rx.fileno(), write_fd, wake, batch_s=0)
        if not fast.sync(7, 1234, tx.getsockname()):
            sys.exit("build_native: rtp_native refused a loopback address")
        for seq, payload in ((7, b"one"), (8, b"two")):
            tx.sendto(build_rtp(payload, 96, seq, 0, 1234, False), rx.getsockname())
        first = fast.run(time.monotonic() + 0.3)  # both written into the pipe, then the deadline
        tx.sendto(build_rtp(b"four", 96, 10, 0, 1234, False), rx.getsockname())
        second = fast.run(time.monotonic() + 5)  # a hole: left to Python
        data, addr = fast.take_packet() if second == rtp_native.STATUS_SLOW else (b"", None)
        os.set_blocking(read_fd, False)
        written = os.read(read_fd, 100)
        got = (first, second, written, fast.next_seq, fast.packets, addr, data[12:])
        if got != (rtp_native.STATUS_TIMEOUT, rtp_native.STATUS_SLOW, b"onetwo", 9, 2, tx.getsockname(), b"four"):
            sys.exit(f"build_native: rtp_native check failed: {got}")
    finally:
        for fd in (read_fd, write_fd, wake):
            os.close(fd)
        rx.close()
        tx.close()


def check() -> None:
    """Demux a real H.264 stream and compare each packet's fields as PyAV sees them and as the module does."""
    import av

    from vms.recording import native_copy

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=15, options={"bf": "2", "g": "15"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        import numpy as np

        for i in range(40):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 5, np.uint8), format="rgb24")
            for pkt in stream.encode(frame):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    buf.seek(0)
    with av.open(buf) as inp:
        seen = 0
        for pkt in inp.demux(video=0):
            if pkt.size == 0:
                continue
            tb = pkt.time_base
            expected = (pkt.pts, pkt.dts, pkt.size, pkt.stream_index, 1 if pkt.is_keyframe else 0,
                        tb.numerator, tb.denominator)
            got = native_copy.packet_fields(pkt)
            got = (got[0], got[1], got[2], got[3], got[4] & 1, got[5], got[6])
            if got != expected:
                sys.exit(f"build_native: packet layout mismatch (PyAV {expected}, native {got}); not using it")
            seen += 1
    if seen < 30:
        sys.exit(f"build_native: the check demuxed only {seen} packets")
    # write_header sets AVFormatContext.pb: the file must be the one PyAV's own header path writes.
    import tempfile

    files = []
    with tempfile.TemporaryDirectory() as tmp:
        for native in (True, False):
            buf.seek(0)
            path = Path(tmp) / f"{native}.mp4"
            with av.open(buf) as inp:
                video = inp.streams.video[0]
                out = av.open(str(path), "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov"})
                copy = out.add_stream_from_template(video, opaque=True)
                copy.time_base = video.time_base
                if native:
                    native_copy.write_header(out)
                for pkt in inp.demux(video):
                    if pkt.size:
                        pkt.stream = copy
                        out.mux(pkt)
                out.close()
            files.append(path.read_bytes())
    if len(files[0]) < 1000 or files[0] != files[1]:
        sys.exit("build_native: write_header wrote another file than PyAV's own header path; not using it")


def fingerprint() -> str:
    """What the build depends on: the source, this script, the PyAV version and the interpreter."""
    import av

    h = hashlib.sha256()
    for path in (SOURCE, RTP_SOURCE, Path(__file__).resolve()):
        h.update(path.read_bytes())
    h.update(f"{av.__version__} {sys.version} {sys.executable}".encode())
    return h.hexdigest()


def main() -> None:
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    outs = [SOURCE.with_name("native_copy" + suffix), RTP_SOURCE.with_name("rtp_native" + suffix)]
    stamp = BUILD / "stamp"
    wanted = fingerprint()
    if all(o.exists() for o in outs) and stamp.exists() and stamp.read_text() == wanted and "--force" not in sys.argv:
        return  # up to date
    for make, verify in ((build, check), (build_rtp, check_rtp)):
        out = make()
        try:
            verify()
        except SystemExit:
            out.unlink(missing_ok=True)
            raise
        print(f"build_native: built and checked {out.relative_to(REPO)}")
    stamp.write_text(wanted)


if __name__ == "__main__":
    main()
