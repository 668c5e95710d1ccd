# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The GB28181 media receiver's steady state in C (vms.gb28181.media): RTP in, PS out, without the GIL.

Once a session has learned its SSRC (and over UDP its source), nearly every packet is the next one in
sequence from that source: `FastPath.run()` takes those from the socket, strips their RTP header (and
over TCP their RFC 4571 framing) and writes the payload into the pipe PyAV reads, waking up as the
Python loop did (poll, drain, write, let the next packets gather for `batch_s`), with no Python and no
GIL. It returns to Python at the first packet it does not take (out of order, another source or SSRC,
RTCP, anything malformed, an interleaved `$` frame), when the wake fd or another watched fd (the
tcp-passive listener) is readable, on an error or end of stream, and at the deadline Python gives
(its silence deadline, and at least once a second for its counters): the Python code keeps every
decision that is not "in order, append". The packet it stopped at is left for Python (`take_packet`,
`take_rest`); what it appended but has not written yet is handed back (`take_out`), so Python's own
output follows it in order.

Measured (scripts/bench_gb28181.py, 20 cameras at 2 Mbps, ~180 packets a second each): the receiving
threads cost 3.4-3.5 ms of CPU per stream-second with every packet in Python (~19 us a packet: more
than the recorder reading, demuxing and writing the same stream), 0.9 with this (~5 us a packet, most
of it the wake-ups and system calls).
"""

from libc.errno cimport EAGAIN, EINTR, EPIPE, errno
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove, memset, strerror
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, nanosleep, timespec
from posix.unistd cimport write

from cpython.bytes cimport PyBytes_FromStringAndSize


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLOUT

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    ssize_t recvfrom(int fd, void *buf, size_t n, int flags, sockaddr *addr, socklen_t *addrlen)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    enum:
        MSG_DONTWAIT
        AF_INET
        AF_INET6

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct in6_addr:
        uint8_t s6_addr[16]
    struct sockaddr_in6:
        sa_family_t sin6_family
        unsigned short sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    unsigned short ntohs(unsigned short)
    unsigned short htons(unsigned short)
    uint32_t ntohl(uint32_t)

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    int inet_pton(int af, const char *src, void *dst)
    enum:
        INET6_ADDRSTRLEN

cdef extern from "<string.h>" nogil:
    int memcmp(const void *a, const void *b, size_t n)


# run() results
cdef enum:
    TIMEOUT = 0      # the deadline passed
    EVENT = 1        # the wake fd or the other watched fd is readable (also while waiting for the pipe)
    SLOW = 2         # a packet (UDP: take_packet) or frame (TCP: take_rest) the fast path does not take
    RECV_ERROR = 3   # receiving failed (`error` is the errno)
    CLOSED = 4       # TCP: the device closed the connection
    SINK_CLOSED = 5  # the pipe's reader is gone
    SINK_ERROR = 6   # writing the pipe failed otherwise (`error`)
    OK = -1          # (internal: go on)

STATUS_TIMEOUT, STATUS_EVENT, STATUS_SLOW, STATUS_RECV_ERROR = TIMEOUT, EVENT, SLOW, RECV_ERROR
STATUS_CLOSED, STATUS_SINK_CLOSED, STATUS_SINK_ERROR = CLOSED, SINK_CLOSED, SINK_ERROR

cdef enum:
    RTP_FIXED = 12
    DATAGRAM = 65536
    MAX_CARRY = 65540   # a partial RFC 4571 frame: 2 + at most 65535 bytes (and a little slack)
    INTERLEAVED = 0x24  # "$"

MAX_CARRY_BYTES = MAX_CARRY  # the most set_carry() takes


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline void sleep_s(double seconds) noexcept nogil:
    cdef timespec ts
    if seconds <= 0:
        return
    ts.tv_sec = <long>seconds
    ts.tv_nsec = <long>((seconds - ts.tv_sec) * 1e9)
    nanosleep(&ts, NULL)


cdef inline int rtp_payload(const uint8_t *p, Py_ssize_t size, Py_ssize_t *start, Py_ssize_t *end) noexcept nogil:
    """The bounds of an RTP packet's payload as vms.gb28181.rtp.rtp_header finds them; 0 when it is not
    a well-formed version-2 packet (Python then sees it, and says why)."""
    cdef Py_ssize_t s, e
    cdef int padding
    if size < RTP_FIXED or (p[0] >> 6) != 2:
        return 0
    s = RTP_FIXED + 4 * (p[0] & 0x0F)
    if s > size:
        return 0
    if p[0] & 0x10:
        if s + 4 > size:
            return 0
        s += 4 + 4 * ((p[s + 2] << 8) | p[s + 3])
        if s > size:
            return 0
    e = size
    if p[0] & 0x20:
        padding = p[size - 1]
        if padding == 0 or s + padding > size:
            return 0
        e = size - padding
    start[0] = s
    end[0] = e
    return 1


cdef class FastPath:
    """The in-order packets of one session's learned SSRC (and UDP source), from `sock_fd` into `sink_fd`.

    Python owns the session's state between runs: it gives the next sequence number, the SSRC and the
    source with sync() before a run, and reads them back (`next_seq`, the counters) after it. The
    counters (`packets`, `payload_bytes`) count what the fast path accepted since Python last reset
    them; `last_packet` and `sink_waited` are monotonic seconds (time.monotonic()'s clock)."""

    cdef int sock_fd, sink_fd, wake_fd, other_fd
    cdef bint tcp
    cdef public uint32_t ssrc
    cdef public int next_seq
    cdef public long long packets, payload_bytes
    cdef public double last_packet, sink_waited
    cdef public double batch_s
    cdef public int drain_packets, drain_chunks
    cdef public int error
    cdef int family
    cdef unsigned short port  # network order
    cdef uint8_t addr[16]
    cdef uint8_t *rx
    cdef Py_ssize_t rx_cap, chunk
    cdef Py_ssize_t carry            # TCP: bytes of a partial frame at rx[0:carry]
    cdef Py_ssize_t rest_start, rest_end  # TCP, after SLOW: the bytes Python must deframe
    cdef Py_ssize_t slow_size        # UDP, after SLOW: the datagram at rx[0:slow_size]
    cdef sockaddr_storage slow_addr
    cdef socklen_t slow_addr_len
    cdef uint8_t *out
    cdef Py_ssize_t out_len, out_pos, out_cap

    def __cinit__(self, bint tcp, int sock_fd, int sink_fd, int wake_fd, int other_fd=-1,
                  double batch_s=0.02, int drain_packets=256, int drain_chunks=8, Py_ssize_t chunk=262144):
        self.tcp = tcp
        self.sock_fd, self.sink_fd, self.wake_fd, self.other_fd = sock_fd, sink_fd, wake_fd, other_fd
        self.batch_s = batch_s
        self.drain_packets, self.drain_chunks = drain_packets, drain_chunks
        self.chunk = chunk if tcp else DATAGRAM
        self.rx_cap = self.chunk + (MAX_CARRY if tcp else 0)
        self.rx = <uint8_t *>malloc(self.rx_cap)
        self.out_cap = 65536
        self.out = <uint8_t *>malloc(self.out_cap)
        if self.rx == NULL or self.out == NULL:
            raise MemoryError()
        self.next_seq = -1
        self.family = 0

    def __dealloc__(self):
        free(self.rx)
        free(self.out)

    def sync(self, int next_seq, uint32_t ssrc, source=None):
        """Python's state before a run: the next sequence number, the SSRC and (UDP) the source address
        as socket.recvfrom gives it. False when the fast path cannot compare that address (then Python
        keeps the session)."""
        self.next_seq = next_seq & 0xFFFF
        self.ssrc = ssrc
        if self.tcp:
            return True
        if source is None or len(source) < 2:
            return False
        host = str(source[0]).encode()
        if inet_pton(AF_INET, host, self.addr) == 1:
            self.family = AF_INET
        elif inet_pton(AF_INET6, host, self.addr) == 1 and (len(source) < 4 or not source[3]):
            self.family = AF_INET6
        else:
            self.family = 0  # a scoped or unparsable address: Python compares it
            return False
        self.port = htons(int(source[1]))
        return True

    def set_carry(self, data):
        """TCP: the bytes Python's deframer holds (from a frame's start), to be parsed before the next
        bytes received. Only when the fast path holds none itself; False when they do not fit."""
        cdef const uint8_t[:] view = data
        cdef Py_ssize_t n = view.shape[0]
        if not self.tcp or self.carry or n > MAX_CARRY:
            return False
        if n:
            memcpy(self.rx, &view[0], n)
        self.carry = n
        return True

    def take_carry(self):
        """TCP: the partial frame the fast path holds (before Python reads the connection itself)."""
        data = PyBytes_FromStringAndSize(<char *>self.rx, self.carry)
        self.carry = 0
        return data

    def take_rest(self):
        """TCP, after SLOW: the received bytes from the frame it stopped at on, for Python's deframer."""
        data = PyBytes_FromStringAndSize(<char *>self.rx + self.rest_start, self.rest_end - self.rest_start)
        self.rest_start = self.rest_end = 0
        return data

    def take_packet(self):
        """UDP, after SLOW: (the datagram, its source address as socket.recvfrom gives it)."""
        cdef char host[INET6_ADDRSTRLEN + 1]
        cdef sockaddr_in *v4
        cdef sockaddr_in6 *v6
        data = PyBytes_FromStringAndSize(<char *>self.rx, self.slow_size)
        self.slow_size = 0
        if self.slow_addr.ss_family == AF_INET:
            v4 = <sockaddr_in *>&self.slow_addr
            inet_ntop(AF_INET, &v4.sin_addr, host, sizeof(host))
            return data, (host.decode(), ntohs(v4.sin_port))
        if self.slow_addr.ss_family == AF_INET6:
            v6 = <sockaddr_in6 *>&self.slow_addr
            inet_ntop(AF_INET6, &v6.sin6_addr, host, sizeof(host))
            return data, (host.decode(), ntohs(v6.sin6_port), ntohl(v6.sin6_flowinfo), v6.sin6_scope_id)
        return data, ("", 0)

    def take_out(self):
        """The payload accepted but not written into the pipe yet (after a wait for the pipe was woken,
        or at a SLOW packet): Python writes it before its own."""
        if self.out_pos >= self.out_len:
            self.out_len = self.out_pos = 0
            return b""
        data = PyBytes_FromStringAndSize(<char *>self.out + self.out_pos, self.out_len - self.out_pos)
        self.out_len = self.out_pos = 0
        return data

    @property
    def strerror(self):
        return strerror(self.error).decode(errors="replace")

    def run(self, double until):
        """Receive and write until something needs Python (see the module's doc); return why (STATUS_*)."""
        cdef int status
        if self.out_pos < self.out_len:
            raise RuntimeError("take_out() the pending payload before running again")
        with nogil:
            status = self._run(until)
        return status

    # -- the loop (no GIL) --------------------------------------------------------------------------

    cdef int _run(self, double until) noexcept nogil:
        cdef pollfd fds[3]
        cdef int nfds, timeout_ms, ready, status
        cdef double now
        cdef long received
        while True:
            now = monotonic()
            if now >= until:
                return TIMEOUT
            fds[0].fd, fds[0].events, fds[0].revents = self.sock_fd, POLLIN, 0
            fds[1].fd, fds[1].events, fds[1].revents = self.wake_fd, POLLIN, 0
            nfds = 2
            if self.other_fd >= 0:
                fds[2].fd, fds[2].events, fds[2].revents = self.other_fd, POLLIN, 0
                nfds = 3
            timeout_ms = <int>((until - now) * 1000) + 1
            ready = poll(fds, nfds, timeout_ms)
            if ready < 0:
                if errno == EINTR:
                    continue
                self.error = errno
                return RECV_ERROR
            if fds[1].revents or (nfds == 3 and fds[2].revents):
                return EVENT
            if not fds[0].revents:
                continue
            received = 0
            if self.tcp:
                status = self._drain_tcp(&received)
            else:
                status = self._drain_udp(&received)
            if status != OK:
                return status
            status = self._flush(until)
            if status != OK:
                return status
            if 0 < received < (self.drain_chunks * self.chunk if self.tcp else self.drain_packets):
                sleep_s(self.batch_s)

    cdef inline int _append(self, const uint8_t *data, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t cap
        cdef uint8_t *grown
        if self.out_len + n > self.out_cap:
            cap = self.out_cap
            while cap < self.out_len + n:
                cap *= 2
            grown = <uint8_t *>realloc(self.out, cap)
            if grown == NULL:
                return 0
            self.out, self.out_cap = grown, cap
        memcpy(self.out + self.out_len, data, n)
        self.out_len += n
        return 1

    cdef inline bint _accept(self, const uint8_t *p, Py_ssize_t size, double now) noexcept nogil:
        """Append an in-order packet of our SSRC; false (nothing changed) for anything else."""
        cdef Py_ssize_t start, end
        cdef int seq
        if not rtp_payload(p, size, &start, &end):
            return False
        if 192 <= p[1] <= 223:  # RTCP on the RTP port
            return False
        seq = (p[2] << 8) | p[3]
        if seq != self.next_seq:
            return False
        if ((<uint32_t>p[8] << 24) | (<uint32_t>p[9] << 16) | (<uint32_t>p[10] << 8) | p[11]) != self.ssrc:
            return False
        if not self._append(p + start, end - start):
            return False
        self.next_seq = (seq + 1) & 0xFFFF
        self.packets += 1
        self.payload_bytes += end - start
        self.last_packet = now
        return True

    cdef inline bint _our_source(self) noexcept nogil:
        cdef sockaddr_in *v4
        cdef sockaddr_in6 *v6
        if self.slow_addr.ss_family != self.family:
            return False
        if self.family == AF_INET:
            v4 = <sockaddr_in *>&self.slow_addr
            return v4.sin_port == self.port and memcmp(&v4.sin_addr, self.addr, 4) == 0
        if self.family == AF_INET6:
            v6 = <sockaddr_in6 *>&self.slow_addr
            return (v6.sin6_port == self.port and v6.sin6_scope_id == 0
                    and memcmp(&v6.sin6_addr, self.addr, 16) == 0)
        return False

    cdef int _drain_udp(self, long *received) noexcept nogil:
        cdef ssize_t size
        cdef double now = monotonic()
        cdef int i
        if self.family == 0:
            return SLOW  # (sync() refused the source: Python should not have run us)
        for i in range(self.drain_packets):
            self.slow_addr_len = sizeof(self.slow_addr)
            size = recvfrom(self.sock_fd, self.rx, DATAGRAM, MSG_DONTWAIT, <sockaddr *>&self.slow_addr,
                            &self.slow_addr_len)
            if size < 0:
                if errno == EAGAIN:  # (EWOULDBLOCK is EAGAIN on Linux)
                    return OK
                if errno == EINTR:
                    continue
                self.error = errno
                return RECV_ERROR
            received[0] += 1
            if not (self._our_source() and self._accept(self.rx, size, now)):
                self.slow_size = size
                return SLOW
        return OK

    cdef int _drain_tcp(self, long *received) noexcept nogil:
        cdef ssize_t size
        cdef double now = monotonic()
        cdef int i
        for i in range(self.drain_chunks):
            size = recv(self.sock_fd, self.rx + self.carry, self.chunk, MSG_DONTWAIT)
            if size < 0:
                if errno == EAGAIN:  # (EWOULDBLOCK is EAGAIN on Linux)
                    return OK
                if errno == EINTR:
                    continue
                self.error = errno
                return RECV_ERROR
            if size == 0:
                return CLOSED
            received[0] += size
            if not self._deframe(self.carry + size, now):
                return SLOW
        return OK

    cdef bint _deframe(self, Py_ssize_t total, double now) noexcept nogil:
        """Take the RFC 4571 frames in rx[0:total]; keep a partial one as the carry. False at a frame
        the fast path does not take: rx[rest_start:rest_end] is then Python's."""
        cdef Py_ssize_t pos = 0, length
        cdef const uint8_t *p = self.rx
        while total - pos >= 2:
            if p[pos] == INTERLEAVED:  # "$" framing, or a frame of 9216-9471 bytes: Python tells
                break
            length = (p[pos] << 8) | p[pos + 1]
            if length == 0:  # a keepalive frame of some vendors: nothing
                pos += 2
                continue
            if total - pos >= 3 and (p[pos + 2] >> 6) != 2:
                break  # not a frame start: Python's deframer resynchronises
            if total - pos < 2 + length:
                memmove(self.rx, self.rx + pos, total - pos)
                self.carry = total - pos
                return True
            if not self._accept(p + pos + 2, length, now):
                break
            pos += 2 + length
        else:
            memmove(self.rx, self.rx + pos, total - pos)
            self.carry = total - pos
            return True
        self.rest_start, self.rest_end = pos, total
        self.carry = 0
        return False

    cdef int _flush(self, double until) noexcept nogil:
        """Write the accepted payload into the pipe, waiting for room until the wake fd or the deadline
        (then Python takes the rest, and its counters are fresh while it waits itself)."""
        cdef ssize_t n
        cdef pollfd fds[2]
        cdef int timeout_ms
        while self.out_pos < self.out_len:
            n = write(self.sink_fd, self.out + self.out_pos, self.out_len - self.out_pos)
            if n >= 0:
                self.out_pos += n
                continue
            if errno == EINTR:
                continue
            if errno == EAGAIN:  # (EWOULDBLOCK is EAGAIN on Linux)
                timeout_ms = <int>((until - monotonic()) * 1000) + 1
                if timeout_ms <= 0:
                    return TIMEOUT
                fds[0].fd, fds[0].events, fds[0].revents = self.sink_fd, POLLOUT, 0
                fds[1].fd, fds[1].events, fds[1].revents = self.wake_fd, POLLIN, 0
                while poll(fds, 2, timeout_ms) < 0 and errno == EINTR:
                    pass
                self.sink_waited = monotonic()
                if fds[1].revents:
                    return EVENT
                if not fds[0].revents:
                    return TIMEOUT
                continue
            if errno == EPIPE:
                return SINK_CLOSED
            self.error = errno
            return SINK_ERROR
        self.out_len = self.out_pos = 0
        return OK
