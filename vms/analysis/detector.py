"""The per-station detector: samples and packet sizes in, state changes, faults and activity out.

Pure computation (no decoding, no database, no clock): the live observer and `vms analyze` feed it
the same way, so what is scored offline is what runs in production. Times are epoch ms (live) or
ms from the start of a file (offline).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vms.analysis.calibration import LabelledLook, StationCalibration, analysis_mask
from vms.analysis.features import (
    Features,
    Picture,
    compute_features,
    match,
    mean_abs_diff,
    motion_fraction,
    reduce_planes,
    small_size,
)
from vms.analysis.look import StationLook
from vms.core.settings import AnalysisSettings
from vms.db.models import OpenState

FAULT_KINDS = ("signal_lost", "frozen", "black", "overexposed", "blurred", "covered", "color_cast", "scene_changed",
               "undecodable")
HIDING_FAULTS = {"signal_lost", "frozen", "covered"}  # while one of these holds, the scene cannot be judged
SEVERITY_RANK = {"minor": 0, "major": 1, "critical": 2}


# ---- events ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampled:
    t_ms: int
    vote: OpenState
    features: dict


@dataclass(frozen=True)
class StateChanged:
    t_ms: int
    state: OpenState


@dataclass(frozen=True)
class FaultOpened:
    kind: str
    severity: str
    start_ms: int
    detail: str


@dataclass(frozen=True)
class FaultSeverity:
    kind: str
    severity: str


@dataclass(frozen=True)
class FaultClosed:
    kind: str
    end_ms: int


@dataclass(frozen=True)
class ActivityFound:
    start_ms: int
    end_ms: int
    peak: float


Event = Sampled | StateChanged | FaultOpened | FaultSeverity | FaultClosed | ActivityFound


# ---- state with hysteresis ---------------------------------------------------------------------
class StateTracker:
    """A new state is taken only when every vote for hysteresis_ms agrees; the change is dated to
    the first of those votes. A camera going offline is a fact and switches to unknown at once."""

    def __init__(self, hysteresis_ms: int) -> None:
        self.hysteresis_ms = hysteresis_ms
        self.state: OpenState | None = None
        self._candidate: OpenState | None = None
        self._since = 0

    def vote(self, t_ms: int, vote: OpenState) -> list[Event]:
        if vote == self.state:
            self._candidate = None
            return []
        if vote != self._candidate:
            self._candidate, self._since = vote, t_ms
        if t_ms - self._since >= self.hysteresis_ms:
            self.state, self._candidate = vote, None
            return [StateChanged(self._since, vote)]
        return []

    @property
    def pending(self) -> bool:
        """A vote for another state waits for the hysteresis."""
        return self._candidate is not None

    def force(self, t_ms: int, state: OpenState) -> list[Event]:
        self._candidate = None
        if state == self.state:
            return []
        self.state = state
        return [StateChanged(t_ms, state)]


# ---- faults ------------------------------------------------------------------------------------
class FaultTracker:
    """One fault kind: raised once hits persist min_ms (dated to the first hit), ended once misses
    persist clear_ms (dated to the first miss); severity is the worst seen while it lasts."""

    def __init__(self, kind: str, min_ms: int, clear_ms: int) -> None:
        self.kind, self.min_ms, self.clear_ms = kind, min_ms, clear_ms
        self.active = False
        self.severity = "minor"
        self._first_hit: int | None = None
        self._first_miss: int | None = None
        self._worst = "minor"

    def update(self, t_ms: int, severity: str | None, detail: str = "", since_ms: int | None = None) -> list[Event]:
        if severity is not None:
            self._first_miss = None
            if self._first_hit is None:
                self._first_hit, self._worst = (since_ms if since_ms is not None else t_ms), severity
            elif SEVERITY_RANK[severity] > SEVERITY_RANK[self._worst]:
                self._worst = severity
            if not self.active and t_ms - self._first_hit >= self.min_ms:
                self.active, self.severity = True, self._worst
                return [FaultOpened(self.kind, self._worst, self._first_hit, detail)]
            if self.active and SEVERITY_RANK[self._worst] > SEVERITY_RANK[self.severity]:
                self.severity = self._worst
                return [FaultSeverity(self.kind, self._worst)]
            return []
        if not self.active:
            self._first_hit = None
            return []
        if self._first_miss is None:
            self._first_miss = t_ms
        if t_ms - self._first_miss >= self.clear_ms:
            return self.close(self._first_miss)
        return []

    def open_now(self, t_ms: int, severity: str, detail: str) -> list[Event]:
        self._first_miss = None
        if self.active:
            return []
        self.active, self.severity, self._worst, self._first_hit = True, severity, severity, t_ms
        return [FaultOpened(self.kind, severity, t_ms, detail)]

    def close(self, t_ms: int) -> list[Event]:
        was = self.active
        self.active, self._first_hit, self._first_miss = False, None, None
        return [FaultClosed(self.kind, t_ms)] if was else []


# ---- activity ----------------------------------------------------------------------------------
class RollingPercentile:
    """A percentile of the last `maxlen` values, as np.percentile (linear interpolation) gives it.

    The activity tracker asks for the quiet level once per GOP bucket, ~30 times a sample: NumPy took
    ~0.1 ms a call on 150 values (the deque converted each time), more than the rest of the detector
    (py-spy at 139 cameras). A sorted copy kept alongside costs a bisect per value."""

    def __init__(self, maxlen: int, percent: float) -> None:
        self._values: deque[float] = deque(maxlen=maxlen)
        self._sorted: list[float] = []
        self._q = percent / 100.0

    def __len__(self) -> int:
        return len(self._values)

    def append(self, value: float) -> None:
        if len(self._values) == self._values.maxlen:
            del self._sorted[bisect.bisect_left(self._sorted, self._values[0])]
        self._values.append(value)
        bisect.insort(self._sorted, value)

    def clear(self) -> None:
        self._values.clear()
        self._sorted.clear()

    def value(self) -> float:
        s = self._sorted
        if not s:
            raise ValueError("no values")
        pos = self._q * (len(s) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(s) - 1)
        t = pos - lo
        a, b = s[lo], s[hi]
        # NumPy's lerp: from the nearer end, so that the result stays within [a, b]
        return a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)


class ActivityTracker:
    """Episodes of movement from the bytes of inter-coded frames, relative to the quiet level of this
    camera (a low percentile of recent buckets), plus motion between samples.

    Sizes are averaged per GOP (keyframe to keyframe, at most MAX_BUCKET_MS): frames early in a GOP
    are larger, so fixed one-second buckets would alternate with the GOP and look like motion.
    Buckets are held back until the next sample has been seen, so that a light switched on or off in
    between (which inflates frame sizes without anyone in view) can be discounted."""

    MAX_BUCKET_MS = 4000

    def __init__(self, cfg: AnalysisSettings) -> None:
        self.cfg = cfg
        self.min_excess = 0.0
        self._start: int | None = None
        self._last = 0
        self._bytes = 0
        self._frames = 0
        self._history = RollingPercentile(max(10, int(cfg.activity_baseline_seconds / 2)), 10)
        self._held: list[tuple[int, int, float]] = []  # (start ms, end ms, P bytes per frame)
        self._marks: list[tuple[int, int, float]] = []  # (start ms, end ms, score) of active moments
        self._quiet_until = -(10**15)
        self._episode: list[int] | None = None  # [start, end, active ms]
        self._peak = 0.0

    def set_picture_size(self, width: int, height: int) -> None:
        self.min_excess = self.cfg.activity_min_excess_per_mpixel * width * height / 1e6

    def _close_bucket(self, end_ms: int) -> None:
        if self._frames and self._start is not None:
            self._held.append((self._start, max(end_ms, self._start + 1), self._bytes / self._frames))
        self._start, self._bytes, self._frames = None, 0, 0

    def packet(self, t_ms: int, size: int, keyframe: bool) -> None:
        if self._start is not None and (keyframe or t_ms - self._start >= self.MAX_BUCKET_MS):
            self._close_bucket(t_ms)
            if len(self._held) > 2000:  # no sample for a long time: judge without waiting
                self._judge(relight_from=None)
        if self._start is None:
            self._start = t_ms
        self._last = t_ms
        if not keyframe:
            self._bytes += size
            self._frames += 1

    def copied(self, first_ms: int, last_ms: int, nbytes: int, count: int) -> None:
        """`count` non-key packets between first_ms and last_ms (at most a second apart), as if each
        had been given to packet(): a bucket that outgrew MAX_BUCKET_MS closes at the first."""
        if self._start is not None and first_ms - self._start >= self.MAX_BUCKET_MS:
            self._close_bucket(first_ms)
            if len(self._held) > 2000:
                self._judge(relight_from=None)
        if self._start is None:
            self._start = first_ms
        self._last = last_ms
        self._bytes += nbytes
        self._frames += count

    def sample(self, t_ms: int, relit: bool, prev_sample_ms: int | None, motion: float | None) -> list[Event]:
        """Called at each sample: judge the held buckets, knowing whether the lights changed."""
        if relit:
            self._quiet_until = t_ms + int(self.cfg.relight_settle_seconds * 1000)
            self._history.clear()  # the quiet level of the old lighting no longer applies
            self._judge(relight_from=prev_sample_ms if prev_sample_ms is not None else t_ms)
        else:
            self._judge(relight_from=None)
            if motion is not None and motion >= self.cfg.motion_min_fraction and t_ms >= self._quiet_until:
                self._marks.append((t_ms, t_ms + 1000, 1.0 + motion * 10))
        return self._episodes(t_ms)

    def _judge(self, relight_from: int | None) -> None:
        for start, end, per_frame in self._held:
            if relight_from is not None and end > relight_from:
                continue  # the light switched inside this interval: sizes mean nothing here
            if start < self._quiet_until:
                continue
            if len(self._history) >= 3:
                quiet = self._history.value()
                ratio = per_frame / max(quiet, 1.0)
                if ratio >= self.cfg.activity_ratio and per_frame - quiet >= self.min_excess:
                    self._marks.append((start, end, ratio))
            self._history.append(per_frame)
        self._held = []

    def _episodes(self, now_ms: int) -> list[Event]:
        out: list[Event] = []
        gap = int(self.cfg.activity_gap_seconds * 1000)
        for start, end, score in sorted(self._marks):
            if self._episode is not None and start - self._episode[1] > gap:
                out += self._finish()
            if self._episode is None:
                self._episode, self._peak = [start, end, 0], 0.0
            self._episode[1] = max(self._episode[1], end)
            self._episode[2] += end - start
            self._peak = max(self._peak, score)
        self._marks = []
        if self._episode is not None and now_ms - self._episode[1] > gap:
            out += self._finish()
        return out

    def _finish(self) -> list[Event]:
        ep, self._episode = self._episode, None
        if ep is None or ep[2] < self.cfg.activity_min_active_seconds * 1000:
            return []
        return [ActivityFound(ep[0], ep[1], round(self._peak, 3))]

    def flush(self, t_ms: int) -> list[Event]:
        """The stream ended: judge what is held and end any episode."""
        self._close_bucket(self._last + 1)
        self._judge(relight_from=None)
        out = self._episodes(t_ms)
        return out + self._finish()


# ---- the station detector ----------------------------------------------------------------------
class StationDetector:
    def __init__(
        self,
        cfg: AnalysisSettings,
        calibration: StationCalibration | None = None,
        look: StationLook | None = None,
        in_business_hours: Callable[[int], bool] | None = None,
    ) -> None:
        self.calibration = calibration or StationCalibration()
        self.cfg = self.calibration.effective_settings(cfg)
        self.look = look or StationLook()
        self.in_business_hours = in_business_hours
        self.states = StateTracker(int(self.cfg.hysteresis_seconds * 1000))
        min_ms, clear_ms = int(self.cfg.fault_min_seconds * 1000), int(self.cfg.fault_clear_seconds * 1000)
        special = {"frozen": self.cfg.frozen_seconds, "scene_changed": self.cfg.scene_changed_seconds,
                   "color_cast": self.cfg.cast_min_seconds}
        self.faults = {
            k: FaultTracker(k, int(special[k] * 1000) if k in special else min_ms, clear_ms) for k in FAULT_KINDS
        }
        self.activity = ActivityTracker(self.cfg)
        self._mask_cache: tuple[tuple[int, int], np.ndarray | None] | None = None
        self._prev: Picture | None = None
        self._prev_luma: float | None = None
        self._prev_ms: int | None = None
        self._identical_since: int | None = None
        self.online = False
        self._offline_since: int | None = None
        self._reason = ""
        self._hidden_since: int | None = None

    # -- connection ---------------------------------------------------------------------------
    def connected(self, t_ms: int, width: int, height: int) -> list[Event]:
        self.online = True
        self._offline_since = None
        self.activity = ActivityTracker(self.cfg)
        self.activity.set_picture_size(width, height)
        self._prev = None
        self._identical_since = None
        out: list[Event] = []
        if self.faults["signal_lost"].active:
            out += self.faults["signal_lost"].close(t_ms)
        return out

    def disconnected(self, t_ms: int, reason: str) -> list[Event]:
        out = self.activity.flush(t_ms) if self.online else []
        self.online = False
        self._offline_since = t_ms
        self._prev = None
        out += self.states.force(t_ms, OpenState.UNKNOWN)
        # Faults judged from pictures end: nothing is seen any more; signal_lost takes over.
        for k in FAULT_KINDS:
            if k != "signal_lost":
                out += self.faults[k].close(t_ms)
        self._reason = reason
        if self.cfg.fault_min_seconds <= 0:
            out += self.faults["signal_lost"].open_now(t_ms, "critical", f"camera disconnected: {reason}")
        return out

    def undecodable(self, t_ms: int, detail: str, at_once: bool = False) -> list[Event]:
        """A sampled keyframe gave no picture (or no decoder opens for the stream): nothing about this
        camera can be judged. Raised like the other faults once it persists fault_min_seconds (`at_once`:
        now, when no keyframe will ever be decoded on this connection); a decoded picture ends it."""
        tracker = self.faults["undecodable"]
        return tracker.open_now(t_ms, "major", detail) if at_once else tracker.update(t_ms, "major", detail)

    def tick(self, now_ms: int) -> list[Event]:
        """Time passes without packets: raise signal_lost once the camera has been away long enough."""
        if self._offline_since is None or self.faults["signal_lost"].active:
            return []
        if now_ms - self._offline_since >= self.cfg.fault_min_seconds * 1000:
            return self.faults["signal_lost"].open_now(
                self._offline_since, "critical", f"camera disconnected: {self._reason}"
            )
        return []

    # -- packets and samples ------------------------------------------------------------------
    def unsettled(self) -> bool:
        """The last samples started a change of state that later samples must confirm or drop: a vote
        for another state, or a hidden scene (covered, frozen, no signal) that has not yet made the
        state unknown. Other faults rising or clearing wait for the steady samples: they are dated to
        their first hit anyway, and one that flickers (a moving scene half-matching its reference)
        would keep the camera on the fast schedule for nothing."""
        hidden_pending = self._hidden_since is not None and self.states.state != OpenState.UNKNOWN
        return self.states.pending or hidden_pending

    def packet(self, t_ms: int, size: int, keyframe: bool) -> None:
        self.activity.packet(t_ms, size, keyframe)

    def mask_for(self, width: int, height: int) -> np.ndarray | None:
        size = small_size(width, height, self.cfg.analysis_width)
        if self._mask_cache is None or self._mask_cache[0] != size:
            self._mask_cache = (size, analysis_mask(self.calibration, size[0], size[1]))
        return self._mask_cache[1]

    def frame(self, t_ms: int, y: np.ndarray, u: np.ndarray | None = None, v: np.ndarray | None = None) -> list[Event]:
        """One sampled picture (Y plane, optional U/V planes at any size)."""
        pic = reduce_planes(y, u, v, self.cfg.analysis_width, self.mask_for(y.shape[1], y.shape[0]))
        f = compute_features(pic, self.cfg.overexposed_luma)
        return self.picture(t_ms, pic, f)

    def picture(self, t_ms: int, pic: Picture, f: Features) -> list[Event]:
        cfg = self.cfg
        out: list[Event] = []
        split, split_source = self.look.split(cfg, self.calibration)
        lit = f.luma >= split
        black = f.p99 < cfg.black_max_luma
        # A flat picture that is bright or strongly coloured is an encoder's "no video" screen; a flat
        # dark one is just a dark room.
        uniform = not black and f.std < cfg.uniform_max_std and (lit or f.cast_offset >= cfg.cast_min_offset)
        hits: dict[str, tuple[str, str] | None] = dict.fromkeys(FAULT_KINDS)

        # Frozen: the decoded picture does not change at all between samples.
        diff = mean_abs_diff(pic, self._prev) if self._prev is not None else math.inf
        if diff <= cfg.frozen_max_mean_diff:
            self._identical_since = self._identical_since if self._identical_since is not None else self._prev_ms
        else:
            self._identical_since = None
        if self._identical_since is not None and not black:
            hits["frozen"] = ("major", f"picture identical since {self._identical_since}")

        ref_match = edge_ratio = lap_ratio = None
        if uniform:
            hits["signal_lost"] = ("critical", f"flat picture (std {f.std:.1f}): no video signal")
        elif black:
            if self.in_business_hours is not None and self.in_business_hours(t_ms):
                hits["black"] = ("major", f"black picture in business hours (99% of pixels below {f.p99:.0f})")
        else:
            if f.bright_fraction >= cfg.overexposed_fraction:
                sev = "major" if f.bright_fraction >= (1 + cfg.overexposed_fraction) / 2 else "minor"
                hits["overexposed"] = (sev, f"{f.bright_fraction:.0%} of pixels saturated")
            if lit and f.cast_offset >= cfg.cast_min_offset and f.cast_factor >= cfg.cast_ratio:
                sev = "major" if f.cast_offset >= 2 * cfg.cast_min_offset else "minor"
                hits["color_cast"] = (sev, f"chroma offset {f.cast_offset:.0f}, cast factor {f.cast_factor:.1f}")
            ref = self.look.reference_for(lit)
            other = self.look.reference_for(not lit)
            lit_ref = self.look.reference_for(True)
            basis = ref if ref is not None else lit_ref
            if basis is not None:
                ref_match = match(f.edge_thumb, basis.thumb)
                if other is not None:
                    # A picture that matches either known look (lights on or off) is the scene.
                    ref_match = max(ref_match or 0.0, match(f.edge_thumb, other.thumb) or 0.0)
                edge_basis = lit_ref or basis
                edge_ratio = f.edge_density / max(edge_basis.edges, 1e-6)
                lap_ratio = f.laplacian / max(basis.laplacian, 1e-6)
                if ref_match is None:
                    # The reference is of pictures of another shape (the camera's resolution changed
                    # since): nothing to compare with until look.learn_reference starts it again.
                    pass
                elif (ref_match < cfg.covered_match_max and edge_ratio < cfg.covered_edge_ratio
                        and f.luma >= cfg.covered_min_luma):
                    sev = "critical" if edge_ratio < cfg.covered_edge_ratio / 2 else "major"
                    hits["covered"] = (sev, f"scene match {ref_match:.2f}, edges {edge_ratio:.0%} of usual")
                elif ref_match < cfg.scene_match_max and lit:
                    hits["scene_changed"] = ("major", f"scene match {ref_match:.2f} with the reference view")
                elif (lit and ref_match >= cfg.covered_match_max and lap_ratio < cfg.blur_ratio
                      and f.laplacian < cfg.blur_max_laplacian):
                    sev = "major" if lap_ratio < cfg.blur_ratio / 2 else "minor"
                    hits["blurred"] = (sev, f"sharpness {lap_ratio:.0%} of usual")

        for kind, tracker in self.faults.items():
            if kind == "signal_lost" and self._offline_since is not None:
                continue
            hit = hits[kind]
            since = self._identical_since if kind == "frozen" else None
            out += tracker.update(t_ms, hit[0] if hit else None, hit[1] if hit else "", since)

        hidden = any(hits[k] for k in HIDING_FAULTS) or any(self.faults[k].active for k in HIDING_FAULTS)
        vote = OpenState.UNKNOWN if hidden else (OpenState.OPEN if lit else OpenState.CLOSED)
        if vote == OpenState.OPEN and split_source != "operator":
            vote = self._nearest_look(f) or vote
        if hidden:
            # A moment of hidden scene (a head over the lens) says nothing about open or closed: the
            # sample abstains; only a long one makes the state unknown, dated to its start.
            hidden_since = self._hidden_since = t_ms if self._hidden_since is None else self._hidden_since
        else:
            self._hidden_since = None

        # Learn this station's look only from pictures that show the scene normally.
        if not hidden and not any(hits.values()):
            self.look.observe(t_ms, f.luma, cfg.learn_half_life_hours)
            if not black:
                self.look.learn_reference(lit, f, t_ms)

        relit = self._prev_luma is not None and abs(f.luma - self._prev_luma) >= cfg.relight_delta
        motion = None
        if self._prev is not None and not relit and not hidden:
            motion = motion_fraction(pic, self._prev, cfg.motion_pixel_delta)
        out += self.activity.sample(t_ms, relit, self._prev_ms, motion)

        feats: dict[str, float | str | None] = {**f.as_dict()}
        feats.update(split=round(split, 1), split_source=split_source,
                     diff=None if math.isinf(diff) else round(diff, 3),
                     motion=None if motion is None else round(motion, 4),
                     match=None if ref_match is None else round(ref_match, 3),
                     edge_ratio=None if edge_ratio is None else round(edge_ratio, 3))
        out.insert(0, Sampled(t_ms, vote, feats))
        if not hidden:
            out += self.states.vote(t_ms, vote)
        elif t_ms - hidden_since >= self.cfg.hidden_unknown_seconds * 1000:
            out += self.states.force(hidden_since, OpenState.UNKNOWN)
        self._prev, self._prev_luma, self._prev_ms = pic, f.luma, t_ms
        return out

    def _nearest_look(self, f: Features) -> OpenState | None:
        """With operator looks that luma cannot tell apart (lit room, shutter down or up): the look
        whose edge map matches best."""
        best: dict[str, float] = {}
        for lk in self.calibration.looks:
            if len(lk.edge_thumb) == f.edge_thumb.size:
                m = match(f.edge_thumb, np.asarray(lk.edge_thumb, np.float32)) or 0.0
                best[lk.label] = max(best.get(lk.label, -1.0), m)
        if len(best) < 2:
            return None
        return OpenState.OPEN if best[OpenState.OPEN] >= best[OpenState.CLOSED] else OpenState.CLOSED

    def describe(self, y: np.ndarray, u: np.ndarray | None = None, v: np.ndarray | None = None) -> Features:
        """Features of one picture under this station's masks (for labelling a snapshot)."""
        pic = reduce_planes(y, u, v, self.cfg.analysis_width, self.mask_for(y.shape[1], y.shape[0]))
        return compute_features(pic, self.cfg.overexposed_luma)

    def finish(self, t_ms: int) -> list[Event]:
        """End of a file: report the activity still held (faults stay open, end unknown)."""
        return self.activity.flush(t_ms)


def labelled_look(
    cfg: AnalysisSettings, calibration: StationCalibration, label: Literal["open", "closed"], at_ms: int,
    y: np.ndarray
) -> LabelledLook:
    """What the operator's "this is open/closed" on a snapshot (its Y plane) adds to the calibration."""
    f = StationDetector(cfg, calibration).describe(y)
    return LabelledLook(label=label, at_ms=at_ms, luma=round(f.luma, 2),
                        edge_thumb=[round(float(x), 5) for x in f.edge_thumb])
