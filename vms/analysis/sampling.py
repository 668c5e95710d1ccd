"""When to decode the next keyframe: rarely while the picture is settled, sooner when it changes.

Decoding a 1080p keyframe is nearly all of the analysis's cost (~20 ms each), so a settled station
is sampled every `sample_interval_seconds` (60 s). Two cheap signals bring the next sample forward
to `sample_interval_changing_seconds` (20 s) after the last one:
- the detector is unsettled: a vote for another state, or a hidden scene, waits for the samples
  that confirm or drop it (so a change of state is confirmed as finely as before);
- a keyframe's compressed size left, by `sample_size_jump_ratio` or more either way, the band of
  the camera's keyframe sizes over the steady interval before the last sample: lights switched, a
  shutter rolled, the lens covered all change how much an intra-coded picture costs long before a
  sample would see them; sensor noise and people moving change it by far less. A band, not the last
  decoded keyframe, is the reference: a scene whose keyframes vary in a cycle (a screen, a sign)
  would otherwise look changed at every other sample. It is fixed at each sample, so a change
  spread over many keyframes (exposure ramping) still leaves it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from vms.core.settings import AnalysisSettings


class SampleSchedule:
    """The sampling decision of one camera connection. Times are ms on one clock."""

    def __init__(self, cfg: AnalysisSettings) -> None:
        self.configure(cfg)
        self.last_ms: int | None = None
        self.early = 0  # samples taken before the steady interval (for benchmarks and tests)
        self._sizes: deque[tuple[int, int]] = deque()  # (t_ms, bytes) of the last steady interval's keyframes
        self._band: tuple[int, int] | None = None  # lowest and highest of them at the last sample
        self._changed = False  # a keyframe left the band since the last sample

    def configure(self, cfg: AnalysisSettings) -> None:
        self.steady_ms = int(cfg.sample_interval_seconds * 1000)
        self.changing_ms = int(cfg.sample_interval_changing_seconds * 1000)  # above steady_ms: no effect
        self.jump_ratio = cfg.sample_size_jump_ratio

    def restart(self) -> None:
        """A new connection: its first keyframe is sampled, its sizes start a new band."""
        self.last_ms = None
        self._sizes.clear()
        self._band = None
        self._changed = False

    def due(self, t_ms: int, size: int | None, unsettled: Callable[[], bool]) -> bool:
        """Whether the keyframe at t_ms (of `size` bytes, None when unknown) should be decoded.
        Called for every keyframe: the sizes make the band. `unsettled` is asked only when the
        answer depends on it."""
        if size:
            self._note_size(t_ms, size)
        if self.last_ms is None:
            return True
        elapsed = t_ms - self.last_ms
        if elapsed < 0 or elapsed >= self.steady_ms:
            return True  # elapsed < 0: the clock stepped back; start over rather than wait for it
        if elapsed < self.changing_ms:
            return False
        if self._changed or unsettled():
            self.early += 1
            return True
        return False

    def taken(self, t_ms: int) -> None:
        """The keyframe at t_ms (the last one given to due()) is being decoded."""
        self.last_ms = t_ms
        self._changed = False
        if self._sizes:
            self._band = (min(s for _, s in self._sizes), max(s for _, s in self._sizes))

    def _note_size(self, t_ms: int, size: int) -> None:
        sizes = self._sizes
        while sizes and not 0 <= t_ms - sizes[0][0] <= self.steady_ms:
            sizes.popleft()  # older than the steady interval, or the clock stepped back
        sizes.append((t_ms, size))
        if self._band is not None:
            low, high = self._band
            if size >= high * self.jump_ratio or size * self.jump_ratio <= low:
                self._changed = True
