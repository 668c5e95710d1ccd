"""A TCP hop between the recorder and a simulated camera that can be cut like a network link."""

from __future__ import annotations

import socket
import struct
import threading
import time
from urllib.parse import urlsplit, urlunsplit


class NetworkLink:
    """Forwards connections from its own port on 127.0.0.1 to the camera's. cut() makes the camera
    unreachable: open connections carry nothing either way (a dead link: the client only notices by its
    own timeouts) and new connections fail at once (reset, as when a router answers for a host it
    cannot reach, or the camera's switch port is down); restore() lets traffic through again, what the
    open connections held included (TCP would have retransmitted it). `attempts` has the monotonic
    time of every connection a client opened, `refused` of those that failed because of the cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.attempts: list[float] = []
        self.refused: list[float] = []
        threading.Thread(target=self._accept, name="link-accept", daemon=True).start()

    def url(self, camera_url: str) -> str:
        """The camera's URL through this link (credentials and path kept)."""
        parts = urlsplit(camera_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))

    def cut(self) -> None:
        self._up.clear()

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self._up.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass

    def __enter__(self) -> NetworkLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.attempts.append(time.monotonic())
            if not self._up.is_set():
                self.refused.append(self.attempts[-1])
                # Linger 0: the close sends a reset, the client's connection fails at once.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            try:
                camera = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                camera.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, camera]
            for src, dst in ((client, camera), (camera, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="link-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                # Held while the link is cut (and no further reads: the sender's window fills up).
                self._up.wait()
                if not data or self._closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()
