"""A PostgreSQL server of a test's own, which the test may stop, restart or kill -9 (the shared server
of scripts/postgres.sh serves every other test and must never be touched).

PostgreSQL refuses to run as root: as root (CI), the cluster belongs to the `postgres` user of Debian's
package and every server command runs through `runuser`; as anyone else, as that user. It listens on
a Unix socket in its own directory only (no TCP port to collide with).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)


class PrivatePostgres:
    def __init__(self, port: int = 5499) -> None:
        if not BIN_DIRS:
            raise RuntimeError("PostgreSQL is not installed (run scripts/bootstrap.sh)")
        self.bin = BIN_DIRS[0]
        self.port = port
        self.owner = "postgres" if os.geteuid() == 0 else None
        # Not under pytest's tmp_path: that directory is private to root, and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="vms-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.socket_dir.mkdir()
        if self.owner:
            user = pwd.getpwnam(self.owner)
            for p in (self.root, self.socket_dir):
                os.chown(p, user.pw_uid, user.pw_gid)
        self.me = pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.owner:
            cmd = ["runuser", "-u", self.owner, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, cwd=self.root)

    def init(self) -> PrivatePostgres:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-E", "UTF8", "--no-sync")
        conf = (f"listen_addresses = ''\nunix_socket_directories = '{self.socket_dir}'\nport = {self.port}\n"
                "fsync = off\nshared_buffers = 16MB\nmax_connections = 40\n")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(conf)
        self.start()
        self._run("psql", "-h", str(self.socket_dir), "-p", str(self.port), "-d", "postgres", "-qc",
                  f'create role "{self.me}" superuser login')
        self._run("createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-O", self.me, "vms")
        return self

    @property
    def url(self) -> str:
        return f"postgresql:///vms?host={self.socket_dir}&port={self.port}"

    def start(self) -> None:
        # After a kill -9, the dead server's backends may hold its shared memory for a moment, and a
        # start refuses while they do: try again for a while.
        deadline = time.monotonic() + 30
        while True:
            done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                             "start", check=False)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"private PostgreSQL did not start: {done.stdout}{done.stderr}")
            time.sleep(0.5)

    def stop(self) -> None:
        """A fast shutdown: clients are disconnected, open transactions rolled back."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "restart",
                  "-l", str(self.root / "server.log"))

    def kill9(self) -> None:
        """kill -9 of the postmaster (a crash); its backends notice and exit, and the next start recovers."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def close(self) -> None:
        if self.data.exists() and self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
