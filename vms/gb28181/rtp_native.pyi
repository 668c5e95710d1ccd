# The Python face of rtp_native.pyx (a compiled module: mypy cannot read it), for the type checker.
# Keep it in step with the .pyx: a name missing here is an error at every caller.
from typing import Any

STATUS_TIMEOUT: int
STATUS_EVENT: int
STATUS_SLOW: int
STATUS_RECV_ERROR: int
STATUS_CLOSED: int
STATUS_SINK_CLOSED: int
STATUS_SINK_ERROR: int
MAX_CARRY_BYTES: int

class FastPath:
    ssrc: int
    next_seq: int
    packets: int
    payload_bytes: int
    last_packet: float
    sink_waited: float
    batch_s: float
    drain_packets: int
    drain_chunks: int
    error: int
    def __init__(self, tcp: bool, sock_fd: int, sink_fd: int, wake_fd: int, other_fd: int = -1,
                 batch_s: float = 0.02, drain_packets: int = 256, drain_chunks: int = 8,
                 chunk: int = 262144) -> None: ...
    def sync(self, next_seq: int, ssrc: int, source: Any = None) -> bool: ...
    def set_carry(self, data: bytes | bytearray | memoryview) -> bool: ...
    def take_carry(self) -> bytes: ...
    def take_rest(self) -> bytes: ...
    def take_packet(self) -> tuple[bytes, Any]: ...
    def take_out(self) -> bytes: ...
    @property
    def strerror(self) -> str: ...
    def run(self, until: float) -> int: ...
