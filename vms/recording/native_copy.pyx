# cython: language_level=3, boundscheck=False, wraparound=False
"""The recorder's steady state in C: read packets and copy the ordinary ones into the open segment.

Python handles every packet that needs a decision (keyframes, which may cut a segment or feed the
analysis; audio; packets without a timestamp; the first PULLBACK_S of a connection, while the
segment's start may still be pulled back on the receive clock). The 29 other packets of each GOP only
need their timestamps rebased and to be muxed: this loop does that without the GIL, so each camera
costs a GIL round trip per keyframe and per batch instead of two per packet (docs/benchmarks-history.md,
"Session 5: the native copier").

It works on PyAV's own contexts and FFmpeg (the libraries bundled with PyAV), through PyAV's
Cython declarations, but compiled against Debian's FFmpeg headers (PyAV's wheel has none): so it
reads no FFmpeg struct but AVPacket's leading fields and AVFormatContext's `pb` (write_header), which
have not moved in years and which scripts/build_native.py checks; stream indexes and time bases come
from Python.
Without the module, the recorder copies every packet in Python.

Between reads it pauses (`pause_us`), so a camera's packets gather in the socket and one wake-up
reads several frames: waking up once per frame, as a reader blocked in FFmpeg's poll() does, was
most of the recorder's kernel time (docs/design/recording.md, "Pausing between reads").
"""

import os

from libc.stdint cimport int64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, nanosleep, timespec

cimport libav as lib
from av.container.core cimport Container
from av.container.output cimport OutputContainer
from av.error cimport err_check
from av.packet cimport Packet
from av.stream cimport Stream


cdef extern from "libavcodec/avcodec.h" nogil:
    # Not declared by PyAV.
    void av_packet_unref(lib.AVPacket *pkt)
    void av_packet_move_ref(lib.AVPacket *dst, lib.AVPacket *src)

def write_header(OutputContainer container):
    """Open the file and write the header as PyAV's start_encoding() does, without opening codecs.

    PyAV opens every output stream's codec context before the first mux; for a copied H.264 stream
    that is a decoder that never decodes, ~0.9 MB per camera for as long as its segment is open.
    The muxer needs only the streams' codec parameters, which _finalize_for_output() copies as PyAV
    would. Unlike start_encoding(), it sets no container metadata and does not warn of unused
    options. The file is opened with AVIO_FLAG_DIRECT: a fragment's sample data goes to write() in
    one call instead of through FFmpeg's 32 KB buffer. The muxer still patches box sizes by seeking
    back, so a fragment is a few write() and lseek() calls, and for a moment its moof has a zero size
    on disk (playable_length() stops before such a fragment). Measured: -13 % CPU per camera
    (docs/benchmarks-history.md, Ingest, session 6). Reads and writes one AVFormatContext field, `pb`, the fifth,
    unmoved since FFmpeg 1.0 (scripts/build_native.py checks that the file is the one PyAV writes).
    """
    cdef Stream stream
    cdef lib.AVDictionary *opts = NULL
    cdef int ret
    if container._started:
        return
    if container.file is not None or container.ptr.pb != NULL:
        raise ValueError("write_header: only for a container that opens its own file")
    for stream in container.streams:
        stream._finalize_for_output()
    name = os.fsencode(container.name)
    try:
        for key, value in {**container.options, **container.container_options}.items():
            err_check(lib.av_dict_set(&opts, str(key).encode(), str(value).encode(), 0))
        err_check(lib.avio_open(&container.ptr.pb, name, lib.AVIO_FLAG_WRITE | lib.AVIO_FLAG_DIRECT), container.name)
        with nogil:
            ret = lib.avformat_write_header(container.ptr, &opts)
        err_check(ret, container.name)
    except BaseException:
        lib.avio_closep(&container.ptr.pb)  # a no-op when it was not opened
        raise
    finally:
        lib.av_dict_free(&opts)
    container._started = True


# pump() results
cdef enum:
    PACKET = 0        # `packet` holds a packet the caller must handle
    ATTENTION = 1     # `attention` was raised (stop, or a periodic task is due); it is cleared
    END = 2           # the stream ended
    WRITE_FAILED = 3  # muxing a copied packet failed (`write_error`); the packet is lost
    BATCH = 4         # `batch_ticks` of stream time were copied: report them

STATUS_PACKET, STATUS_ATTENTION, STATUS_END, STATUS_WRITE_FAILED, STATUS_BATCH = PACKET, ATTENTION, END, WRITE_FAILED, BATCH

cdef enum:
    MAX_STREAMS = 32
    MAX_KEPT = 900  # packets of one GOP kept for `kept()` (the live tap's limit); later ones are not kept

cdef enum:
    SLOW_READ_US = 1000     # a read that took longer may have waited for the camera (or been preempted)
    MIN_PAUSE_US = 20000    # shorter pauses are not worth a wake-up
    KEY_MARGIN_US = 100000  # a pause ends this long (plus two frames) before the next keyframe is due
    PAUSE_BYTES = 131072    # at most this much gathers in the socket during a pause (the TCP window)
    MAX_GOP_S = 20          # a longer keyframe interval is a timestamp jump, not a GOP

cdef extern from "sys/resource.h" nogil:
    struct rusage:
        long ru_nvcsw
    int getrusage(int who, rusage *usage)

cdef enum:
    RUSAGE_THREAD = 1  # Linux: the calling thread's counters


cdef inline int64_t monotonic_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000 + ts.tv_nsec // 1000


cdef inline long voluntary_switches() noexcept nogil:
    cdef rusage ru
    if getrusage(RUSAGE_THREAD, &ru) != 0:
        return -1
    return ru.ru_nvcsw


# --- Pause planning (docs/design/recording.md, "Pausing between reads") ---------------------------
# Pure functions of their arguments, inlined into the read loop; GopTracker and nap_us below call the
# same ones from Python, for the tests of their bounds.

cdef struct Gop:
    # The input's GOP as the read loop has seen it.
    int64_t key_dts          # video dts of the last keyframe (AV_NOPTS_VALUE: none yet)
    int64_t ticks            # the dts interval between the last two keyframes (0: unknown, or a jump)
    int64_t bytes            # the bytes read in that interval (every stream the copier reads)
    int64_t bytes_since_key  # the bytes read since the last keyframe
    int64_t video_dts        # the last video dts (AV_NOPTS_VALUE: none yet)


cdef inline void gop_init(Gop *gop) noexcept nogil:
    gop.key_dts = gop.video_dts = lib.AV_NOPTS_VALUE
    gop.ticks = gop.bytes = gop.bytes_since_key = 0


cdef inline void gop_packet(Gop *gop, bint video, int64_t dts, int size, bint key,
                            lib.AVRational tb) noexcept nogil:
    """A packet was read (`video`: of the video stream; dts AV_NOPTS_VALUE: none; tb: the video's)."""
    gop.bytes_since_key += size
    if not video or dts == lib.AV_NOPTS_VALUE:
        return
    if key:
        if (gop.key_dts != lib.AV_NOPTS_VALUE and dts > gop.key_dts and tb.num > 0 and tb.den > 0
                and dts - gop.key_dts <= MAX_GOP_S * tb.den // tb.num):
            gop.ticks = dts - gop.key_dts
            gop.bytes = gop.bytes_since_key - size
        else:
            gop.ticks = 0  # unknown (or a timestamp jump) until the next regular interval: no pause
        gop.key_dts = dts
        gop.bytes_since_key = size
    gop.video_dts = dts


cdef inline int64_t plan_pause(const Gop *gop, int64_t frame_ticks, lib.AVRational tb,
                               int64_t max_us) noexcept nogil:
    """How long to pause after a read that waited for the camera (so the packet just read is about
    the newest there is), in us; 0: no pause. At most max_us; it ends two frames and KEY_MARGIN_US
    before the next keyframe is due, if the GOP is regular: keyframes are where the recorder reads the
    receive clock (a segment's wall end, docs/design/time.md) and where the analysis samples, and they
    are read as promptly as without pauses. At most PAUSE_BYTES gather at the GOP's bitrate. Shorter
    than MIN_PAUSE_US: not worth a wake-up."""
    cdef int64_t ticks, us, gop_us
    if gop.ticks <= 0 or gop.video_dts == lib.AV_NOPTS_VALUE or tb.num <= 0 or tb.den <= 0 or max_us <= 0:
        return 0  # no regular GOP seen yet: no pause
    ticks = gop.key_dts + gop.ticks - gop.video_dts - 2 * frame_ticks
    if ticks <= 0 or ticks > gop.ticks:
        return 0
    us = ticks * 1000000 * tb.num // tb.den - KEY_MARGIN_US
    if us > max_us:
        us = max_us
    gop_us = gop.ticks * 1000000 * tb.num // tb.den
    if gop.bytes > 0 and PAUSE_BYTES * gop_us // gop.bytes < us:
        us = PAUSE_BYTES * gop_us // gop.bytes  # a high bitrate: keep within the TCP window
    return us if us >= MIN_PAUSE_US else 0


cdef inline int64_t nap(bint pausing, bint attention, int64_t pause_until, int64_t now) noexcept nogil:
    """How long to sleep before the next read, in us (0: read now), for a pause planned to end at
    `pause_until` (monotonic us, 0: none). Only while `pausing`: the copier is armed (never in a
    connection's first segment, while the segment's start may still move on the receive clock, nor
    while a viewer watches live) and has a pause length (none over UDP, see copier.make_copier). Never
    once attention is asked (a stop, a periodic task)."""
    if not pausing or attention or pause_until == 0 or pause_until - now < MIN_PAUSE_US:
        return 0
    return pause_until - now


cdef class PacketCopier:
    """One per camera connection; used only from the camera's thread (except `attention`)."""

    cdef Container source
    cdef list streams
    cdef readonly int video_index
    cdef bint wanted[MAX_STREAMS]
    cdef lib.AVRational stream_tb[MAX_STREAMS]
    cdef Container sink
    cdef int sink_index
    cdef lib.AVRational in_tb
    cdef lib.AVRational out_tb
    cdef lib.AVPacket *pkt
    cdef lib.AVPacket *kept_pkt[MAX_KEPT]
    cdef int64_t kept_rel[MAX_KEPT]
    cdef int n_kept

    # Raised from any thread; the loop checks it before every read.
    cdef public bint attention
    # Copy ordinary video packets into `sink` (else every packet is handed over).
    cdef public bint armed
    # The recorder's timeline (see StreamRecorder.video_packet): same arithmetic, same state.
    cdef public int64_t pos
    cdef public int64_t last_dts
    cdef public int64_t start_pos
    cdef public int64_t max_step
    cdef public int64_t frame_ticks
    cdef public int64_t batch_ticks
    # Keep a reference to each packet copied since the last video keyframe read (no copy of its data,
    # no Python object), for observers that want the current GOP (the live tap); kept() hands them over.
    cdef public bint keep
    # What the last pump() copied.
    cdef public long copied
    cdef public long copied_bytes
    cdef public int64_t first_rel
    cdef public int64_t last_rel
    cdef public int write_error
    # A read error (or the end) met after copying packets: reported by the next pump, so that the
    # caller first takes over what was copied.
    cdef int read_error
    cdef object pending_exc
    cdef public Packet packet
    # Pausing between reads, only while armed: the longest pause (0: never); when the pause planned
    # ends (monotonic us, 0: none planned); whether the last pause's packets are still being read;
    # the thread's voluntary context switches at the last check; and the input's GOP as the loop has
    # seen it, to end pauses before a keyframe is due and before more than PAUSE_BYTES gather.
    cdef public int64_t pause_us
    cdef int64_t pause_until
    cdef bint catching_up
    cdef int64_t caught_up_by
    cdef long switches
    cdef Gop gop
    cdef public long pauses

    def __cinit__(self):
        self.pkt = lib.av_packet_alloc()
        if self.pkt == NULL:
            raise MemoryError()
        cdef int i
        for i in range(MAX_KEPT):
            self.kept_pkt[i] = NULL
        self.n_kept = 0

    def __dealloc__(self):
        lib.av_packet_free(&self.pkt)
        cdef int i
        for i in range(MAX_KEPT):
            if self.kept_pkt[i] != NULL:
                lib.av_packet_free(&self.kept_pkt[i])

    def __init__(self, Container source, streams, int video_index):
        self.source = source
        self.streams = list(source.streams)
        self.video_index = video_index
        cdef int i
        for i in range(MAX_STREAMS):
            self.wanted[i] = False
            self.stream_tb[i].num, self.stream_tb[i].den = 0, 1
        for stream in self.streams[:MAX_STREAMS]:
            if stream.time_base is not None:
                self.stream_tb[stream.index].num = stream.time_base.numerator
                self.stream_tb[stream.index].den = stream.time_base.denominator
        for stream in streams:
            if stream.index >= MAX_STREAMS:
                raise ValueError(f"stream index {stream.index} out of range")
            self.wanted[stream.index] = True
        self.armed = False
        self.attention = False
        self.batch_ticks = 1 << 62
        gop_init(&self.gop)

    def arm(self, Container sink, sink_stream, int64_t start_pos, int64_t pos, int64_t last_dts,
            int64_t max_step, int64_t frame_ticks, int64_t batch_ticks):
        """Copy ordinary video packets into `sink_stream` of `sink`, continuing this timeline (the
        sink's header must be written: the muxer sets the stream's time base then)."""
        out_tb = sink_stream.time_base
        self.sink = sink
        self.sink_index = sink_stream.index
        self.in_tb = self.stream_tb[self.video_index]
        self.out_tb.num, self.out_tb.den = out_tb.numerator, out_tb.denominator
        self.start_pos, self.pos, self.last_dts = start_pos, pos, last_dts
        self.max_step, self.frame_ticks, self.batch_ticks = max_step, frame_ticks, batch_ticks
        self.armed = True

    def disarm(self):
        self.armed = False
        self.sink = None

    def wake(self):
        """From any thread: end the current pump as `attention` does (it returns ATTENTION)."""
        self.attention = True

    def pump(self):
        """Read until a packet needs the caller (or attention, a batch, the end, a write error)."""
        cdef lib.AVPacket *p = self.pkt
        cdef lib.AVFormatContext *src = self.source.ptr
        cdef lib.AVFormatContext *dst = NULL
        cdef int ret = 0
        cdef int status = -1
        cdef int idx
        cdef int vidx = self.video_index
        cdef int size
        cdef int64_t step, rel
        cdef bint kept
        cdef int64_t t0 = 0, sleep_us
        cdef long switches
        cdef bint waited
        cdef timespec ts
        cdef lib.AVRational vtb = self.stream_tb[vidx]
        if self.armed and self.sink is not None:
            dst = self.sink.ptr
        cdef bint pausing = self.pause_us > 0 and dst != NULL
        if pausing:
            self.switches = voluntary_switches()  # what Python did since the last pump is not a wait
        self.copied = 0
        self.copied_bytes = 0
        cdef bint keep = self.keep
        if not keep and self.n_kept:
            self._drop_kept()
        if self.pending_exc is not None:
            exc, self.pending_exc = self.pending_exc, None
            raise exc
        if self.read_error:
            ret, self.read_error = self.read_error, 0
            return self._read_failed(ret)
        with nogil:
            while True:
                if self.pause_until:
                    # (A disarmed copier hands every packet to Python at once.)
                    sleep_us = nap(pausing, self.attention, self.pause_until, monotonic_us())
                    if sleep_us:
                        ts.tv_sec = sleep_us // 1000000
                        ts.tv_nsec = (sleep_us % 1000000) * 1000
                        nanosleep(&ts, NULL)
                        self.switches = voluntary_switches()  # the pause's own switch is not a wait
                        self.pauses += 1
                        self.catching_up = True
                        # Packets that gathered during the pause are read before attention is
                        # answered (a stop would drop them), for at most as long as the pause.
                        self.caught_up_by = monotonic_us() + sleep_us
                    self.pause_until = 0
                if self.attention and (not self.catching_up or monotonic_us() > self.caught_up_by):
                    self.attention = False
                    self.catching_up = False
                    status = ATTENTION
                    break
                waited = False
                if pausing:
                    t0 = monotonic_us()
                ret = lib.av_read_frame(src, p)
                if pausing and monotonic_us() - t0 > SLOW_READ_US:
                    # Slow: it waited for the camera, or the thread was preempted. Only the first
                    # makes a voluntary context switch; then the packet read is about the newest.
                    switches = voluntary_switches()
                    if switches != self.switches:
                        self.switches = switches
                        self.catching_up = False
                        waited = True
                if ret < 0:
                    break
                idx = p.stream_index
                if idx < 0 or idx >= MAX_STREAMS or not self.wanted[idx]:
                    av_packet_unref(p)
                    continue
                if idx == vidx and p.flags & lib.AV_PKT_FLAG_KEY and self.n_kept:
                    self._drop_kept()  # a new GOP: the packets kept of the last one are of no use
                gop_packet(&self.gop, idx == vidx, p.dts, p.size, p.flags & lib.AV_PKT_FLAG_KEY, vtb)
                if waited:
                    # Timed from now, whatever Python does before the next pump.
                    sleep_us = plan_pause(&self.gop, self.frame_ticks, vtb, self.pause_us)
                    if sleep_us:
                        self.pause_until = monotonic_us() + sleep_us
                if (dst == NULL or idx != vidx or p.size == 0 or p.dts == lib.AV_NOPTS_VALUE
                        or (p.flags & lib.AV_PKT_FLAG_KEY)):
                    status = PACKET
                    break
                step = p.dts - self.last_dts
                if step <= 0 or step > self.max_step:
                    step = self.frame_ticks
                self.last_dts = p.dts
                self.pos += step
                rel = self.pos - self.start_pos
                if p.pts != lib.AV_NOPTS_VALUE and p.pts > p.dts:
                    p.pts = rel + p.pts - p.dts
                else:
                    p.pts = rel
                p.dts = rel
                p.stream_index = self.sink_index
                lib.av_packet_rescale_ts(p, self.in_tb, self.out_tb)
                p.time_base = self.out_tb
                size = p.size
                kept = False
                if keep and self.n_kept < MAX_KEPT:
                    if self.kept_pkt[self.n_kept] == NULL:
                        self.kept_pkt[self.n_kept] = lib.av_packet_alloc()
                    kept = (self.kept_pkt[self.n_kept] != NULL
                            and lib.av_packet_ref(self.kept_pkt[self.n_kept], p) == 0)
                # Takes the packet's reference, on success and on failure.
                ret = lib.av_interleaved_write_frame(dst, p)
                av_packet_unref(p)
                if ret < 0:
                    if kept:
                        av_packet_unref(self.kept_pkt[self.n_kept])  # not recorded: not kept either
                    self.write_error = ret
                    status = WRITE_FAILED
                    break
                if kept:
                    self.kept_rel[self.n_kept] = rel
                    self.n_kept += 1
                if self.copied == 0:
                    self.first_rel = rel
                self.last_rel = rel
                self.copied += 1
                self.copied_bytes += size
                if rel - self.first_rel >= self.batch_ticks:
                    status = BATCH
                    break
        try:
            # An exception a Python I/O callback stashed during the reads (PyAV's demux checks after
            # every read; left here, the next PyAV call, a mux, would raise it as its own).
            err_check(0)
        except BaseException as exc:
            if status == PACKET or status == -1:
                if status == PACKET:
                    av_packet_unref(p)  # demux raises instead of yielding it
                status = BATCH  # the stashed exception stands for the read error too, as in err_check
                if not self.copied:
                    raise
            # Raised by the next pump, once the caller has taken what was copied (and handled a
            # failed write or the attention this pump ended with).
            self.pending_exc = exc
            return status
        if status == -1:
            if self.copied:
                self.read_error = ret
                return BATCH
            return self._read_failed(ret)
        if status == PACKET:
            self.packet = self._hand_over(p)
        return status

    cdef int _read_failed(self, int ret) except -1:
        if ret == lib.AVERROR_EOF:
            return END
        err_check(ret)  # raises the same error PyAV's demux would
        return END

    @property
    def kept_count(self):
        """Packets kept (see `keep`) and not yet handed over by kept()."""
        return self.n_kept

    def kept(self):
        """Hand over the packets copied since the last video keyframe read, if `keep` was set:
        (packet, position relative to the segment start, in the input's time base); their timestamps
        are the segment's, in its time base. The copier keeps none of them any more."""
        out = []
        cdef Packet packet
        cdef int i
        for i in range(self.n_kept):
            packet = Packet()
            av_packet_move_ref(packet.ptr, self.kept_pkt[i])
            packet.ptr.time_base = self.out_tb
            out.append((packet, self.kept_rel[i]))
        self.n_kept = 0
        return out

    cdef void _drop_kept(self) noexcept nogil:
        cdef int i
        for i in range(self.n_kept):
            av_packet_unref(self.kept_pkt[i])
        self.n_kept = 0

    cdef Packet _hand_over(self, lib.AVPacket *p):
        # As PyAV's demux yields it: the stream and its time base attached.
        cdef Packet packet = Packet()
        av_packet_move_ref(packet.ptr, p)
        cdef int idx = packet.ptr.stream_index
        if idx < len(self.streams):
            packet._stream = self.streams[idx]
            packet.ptr.time_base = self.stream_tb[idx]
        return packet


def packet_fields(Packet packet):
    """The fields this module reads, as compiled here; the build checks them against PyAV's view."""
    cdef lib.AVPacket *p = packet.ptr
    return (p.pts, p.dts, p.size, p.stream_index, p.flags, p.time_base.num, p.time_base.den)


cdef class GopTracker:
    """The read loop's GOP tracking and pause planning (gop_packet, plan_pause), for Python: the tests
    of their bounds drive the same inline functions the loop runs."""

    cdef Gop gop
    cdef lib.AVRational tb

    def __cinit__(self, int tb_num=1, int tb_den=90000):
        gop_init(&self.gop)
        self.tb.num, self.tb.den = tb_num, tb_den

    def packet(self, int64_t dts, int size, bint key=False, bint video=True):
        """A packet read (dts in the video time base)."""
        gop_packet(&self.gop, video, dts, size, key, self.tb)

    def pause_us(self, int64_t frame_ticks, int64_t max_us):
        """The pause a read that waited for the camera would plan now, in us (0: none)."""
        return plan_pause(&self.gop, frame_ticks, self.tb, max_us)

    @property
    def gop_ticks(self):
        return self.gop.ticks

    @property
    def gop_bytes(self):
        return self.gop.bytes


def nap_us(bint pausing, bint attention, int64_t pause_until, int64_t now):
    """The read loop's decision to sleep before a read (see nap), for Python."""
    return nap(pausing, attention, pause_until, now)
