"""The detector on synthetic pictures and packet sizes with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vms.analysis.calibration import Polygon, StationCalibration, analysis_mask, parse_calibration
from vms.analysis.detector import (
    ActivityFound,
    FaultClosed,
    FaultOpened,
    RollingPercentile,
    Sampled,
    StateChanged,
    StationDetector,
)
from vms.analysis.features import compute_features, reduce_planes
from vms.analysis.look import StationLook, load_look, save_look
from vms.core.errors import ConfigError
from vms.core.settings import AnalysisSettings

H, W = 180, 320
FAST = {"sample_interval_seconds": 1, "hysteresis_seconds": 5, "fault_min_seconds": 2, "fault_clear_seconds": 2,
        "frozen_seconds": 3, "scene_changed_seconds": 3, "cast_min_seconds": 2, "hidden_unknown_seconds": 6}


def cfg(**kw) -> AnalysisSettings:
    return AnalysisSettings(**{**FAST, **kw})


def scene(seed: int = 1, level: float = 120, contrast: float = 60) -> np.ndarray:
    """A textured room-like picture: random rectangles (shelves, goods) on a wall."""
    rng = np.random.default_rng(seed)
    img = np.full((H, W), level, np.float32)
    for _ in range(40):
        x, y = rng.integers(0, W - 20), rng.integers(0, H - 20)
        w, h = rng.integers(8, 60), rng.integers(8, 50)
        img[y:y + h, x:x + w] = level + rng.uniform(-contrast, contrast)
    return img


def frame(base: np.ndarray, t: int, noise: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(1000 + t)
    return np.clip(base + rng.normal(0, noise, base.shape), 16, 235).astype(np.uint8)


def neutral() -> tuple[np.ndarray, np.ndarray]:
    return np.full((H // 2, W // 2), 128, np.uint8), np.full((H // 2, W // 2), 128, np.uint8)


class Run:
    """Feeds samples one per second and collects the events."""

    def __init__(self, det: StationDetector) -> None:
        self.det, self.t, self.events = det, 0, []

    def feed(self, images, chroma=None, seconds: int = 1) -> None:
        for img in images:
            u, v = chroma if chroma is not None else neutral()
            self.events += self.det.frame(self.t * 1000, img, u, v)
            self.t += seconds

    def faults(self, kind=None) -> list[FaultOpened]:
        return [e for e in self.events if isinstance(e, FaultOpened) and (kind is None or e.kind == kind)]

    def states(self) -> list[tuple[int, str]]:
        return [(e.t_ms, e.state) for e in self.events if isinstance(e, StateChanged)]


def warm(run: Run, base: np.ndarray, n: int = 8) -> None:
    run.feed(frame(base, run.t + i) for i in range(n))


def test_lit_scene_is_open_and_raises_no_fault():
    run = Run(StationDetector(cfg()))
    warm(run, scene(), 15)
    assert run.states() == [(0, "open")]
    assert run.faults() == []


def test_state_change_needs_hysteresis_and_is_dated_to_its_first_sample():
    run = Run(StationDetector(cfg()))
    lit, dark = scene(level=120), scene(level=30, contrast=8)
    warm(run, lit, 10)
    run.feed([frame(dark, 10), frame(dark, 11)])  # a flicker of two samples: no change
    warm(run, lit, 10)
    assert run.states() == [(0, "open")]
    start = run.t
    run.feed(frame(dark, run.t + i) for i in range(10))
    assert run.states() == [(0, "open"), (start * 1000, "closed")]


def test_black_is_a_fault_only_in_business_hours():
    black = np.full((H, W), 16, np.uint8)
    off_hours = Run(StationDetector(cfg()))
    off_hours.feed([black] * 8)
    assert off_hours.faults() == [] and off_hours.states() == [(0, "closed")]
    in_hours = Run(StationDetector(cfg(), in_business_hours=lambda t: True))
    in_hours.feed([black] * 8)
    assert [(f.kind, f.severity, f.start_ms) for f in in_hours.faults()] == [("black", "major", 0)]


def test_frozen_picture():
    run = Run(StationDetector(cfg()))
    warm(run, scene(), 6)
    still = frame(scene(), 99)
    start = run.t
    run.feed([still] * 5)
    frozen = run.faults("frozen")
    assert len(frozen) == 1 and frozen[0].start_ms == start * 1000  # dated to the first identical pair
    warm(run, scene(), 6)
    assert any(isinstance(e, FaultClosed) and e.kind == "frozen" for e in run.events)
    assert run.states() == [(0, "open")]  # frozen for 5 s < hidden_unknown_seconds: state held


def test_flat_bright_picture_is_signal_lost_and_disconnect_too():
    run = Run(StationDetector(cfg()))
    warm(run, scene(), 6)
    run.feed([np.full((H, W), 140, np.uint8)] * 5)
    assert [f.severity for f in run.faults("signal_lost")] == ["critical"]
    det = StationDetector(cfg())
    det.connected(0, W, H)
    events = det.disconnected(10_000, "stalled")
    assert StateChanged(10_000, "unknown") in events
    assert det.tick(11_000) == []  # not yet fault_min_seconds
    opened = det.tick(12_500)
    assert [(e.kind, e.start_ms) for e in opened] == [("signal_lost", 10_000)]
    assert det.connected(20_000, W, H) == [FaultClosed("signal_lost", 20_000)]


def test_overexposed():
    run = Run(StationDetector(cfg()))
    img = scene(level=120)
    img[:, : int(W * 0.8)] = 240
    run.feed(frame(img, i, 1) for i in range(6))
    assert [f.kind for f in run.faults()] == ["overexposed"]


def test_blurred_lens():
    run = Run(StationDetector(cfg()))
    base = scene()
    warm(run, base, 8)
    blurred = cv2.GaussianBlur(base, (0, 0), 4)
    run.feed(frame(blurred, run.t + i, 0.5) for i in range(6))
    assert [f.kind for f in run.faults()] == ["blurred"]


def test_covered_lens_is_a_fault_not_a_state_change():
    run = Run(StationDetector(cfg()))
    warm(run, scene(), 10)
    # Something close to the lens: a dim, smooth, featureless blob (like a head or a hand).
    yy, xx = np.mgrid[0:H, 0:W]
    blob = (45 + 15 * np.exp(-((xx - 150) ** 2 + (yy - 80) ** 2) / 8000)).astype(np.float32)
    run.feed(frame(blob, run.t + i, 1) for i in range(4))
    warm(run, scene(), 6)
    assert [f.kind for f in run.faults()] == ["covered"]
    assert run.states() == [(0, "open")]


def test_covered_for_long_makes_the_state_unknown_from_its_start():
    run = Run(StationDetector(cfg()))
    warm(run, scene(), 10)
    start = run.t
    run.feed(frame(np.full((H, W), 50, np.float32), run.t + i, 1) for i in range(10))
    assert run.states() == [(0, "open"), (start * 1000, "unknown")]


def test_color_cast():
    run = Run(StationDetector(cfg()))
    u = np.full((H // 2, W // 2), 128 - 25, np.uint8)
    v = np.full((H // 2, W // 2), 128 + 25, np.uint8)
    run.feed([frame(scene(), i) for i in range(6)], chroma=(u, v))
    assert [(f.kind, f.severity) for f in run.faults()] == [("color_cast", "major")]


def test_camera_moved_is_scene_changed():
    run = Run(StationDetector(cfg()))
    warm(run, scene(seed=1), 10)
    run.feed(frame(scene(seed=7), run.t + i) for i in range(6))
    assert [f.kind for f in run.faults()] == ["scene_changed"]


def test_privacy_mask_pixels_never_reach_a_feature():
    cal = StationCalibration(privacy_masks=[Polygon(points=[(0.5, 0), (1, 0), (1, 1), (0.5, 1)])])
    mask = analysis_mask(cal, 160, 90)
    assert mask[:, :80].all() and not mask[:, 81:].any()
    dark = scene(level=30, contrast=8)
    a, b = dark.copy(), dark.copy()
    b[:, W // 2:] = 230  # a bright TV in the masked half
    fa = compute_features(reduce_planes(frame(a, 1), None, None, 160, mask), 233)
    pic_b = reduce_planes(frame(b, 1), None, None, 160, mask)
    fb = compute_features(pic_b, 233)
    assert (pic_b.gray[:, 81:] == 0).all()
    assert fa.as_dict() == fb.as_dict()
    # Without the mask the TV makes the station look open; with it, closed.
    unmasked, masked = Run(StationDetector(cfg())), Run(StationDetector(cfg(), cal))
    b[:, W // 2:] = 235
    unmasked.feed(frame(b, i) for i in range(8))
    masked.feed(frame(b, i) for i in range(8))
    assert unmasked.states() == [(0, "open")] and masked.states() == [(0, "closed")]


def test_detection_zone_limits_the_analysis():
    cal = StationCalibration(zones=[Polygon(points=[(0, 0), (0.25, 0), (0.25, 0.25), (0, 0.25)])])
    mask = analysis_mask(cal, 160, 90)
    assert 0.04 < mask.mean() < 0.09


def test_calibration_errors_name_the_problem():
    with pytest.raises(ConfigError, match="outside the picture"):
        parse_calibration({"zones": [{"points": [[0, 0], [1.5, 0], [1, 1]]}]})
    with pytest.raises(ConfigError, match="unknown analysis setting"):
        parse_calibration({"overrides": {"hysteresis_minutes": 3}})
    with pytest.raises(ConfigError, match="hysteresis_seconds"):
        parse_calibration({"overrides": {"hysteresis_seconds": -4}})
    cal = parse_calibration({"overrides": {"sample_interval_seconds": 20}})
    assert cal.effective_settings(AnalysisSettings()).sample_interval_seconds == 20


def _activity_run(sizes_per_second, lumas) -> list:
    """15 fps; one keyframe per second; one sample every 5 s with the given scene luma."""
    det = StationDetector(cfg(sample_interval_seconds=5))
    det.connected(0, 1920, 1080)
    events = []
    for sec, size in enumerate(sizes_per_second):
        for i in range(15):
            det.packet(sec * 1000 + i * 66, size * 8 if i == 0 else size, i == 0)
        if sec % 5 == 4:
            img = frame(scene(level=lumas(sec), contrast=10), 7, 1.0)  # same picture: no sample motion
            events += det.frame(sec * 1000 + 999, img)
    events += det.finish(len(sizes_per_second) * 1000)
    return [e for e in events if isinstance(e, ActivityFound)]


def test_activity_from_packet_sizes():
    sizes = [10_000] * 60 + [16_000] * 10 + [10_000] * 30
    episodes = _activity_run(sizes, lambda s: 120)
    assert [(e.start_ms, e.end_ms) for e in episodes] == [(60_000, 70_000)]
    assert episodes[0].peak == pytest.approx(1.6)
    assert _activity_run([10_000] * 100, lambda s: 120) == []


def test_lights_switched_on_is_not_activity():
    # Frame sizes jump when the light goes on at 60 s (more detail, more noise), nobody moves.
    sizes = [3_000] * 60 + [10_000] * 40
    assert _activity_run(sizes, lambda s: 30 if s < 60 else 120) == []


def test_station_learns_its_own_split_and_keeps_it():
    # A shop whose "closed" look is a dim room (luma 80) the default split (70) would call open.
    look = StationLook()
    c = cfg(learn_min_samples=50)
    t = 0
    for _day in range(3):
        for i in range(60):
            look.observe(t, 80 + (i % 5), c.learn_half_life_hours)
            t += 600_000
        for i in range(60):
            look.observe(t, 150 + (i % 7), c.learn_half_life_hours)
            t += 600_000
    split, source = look.split(c, StationCalibration())
    assert source == "learned" and 90 < split < 140
    det = StationDetector(c, look=look)
    run = Run(det)
    run.feed(frame(scene(level=80, contrast=10), i) for i in range(8))
    assert run.states() == [(0, "closed")]


def test_learned_look_survives_a_restart(tmp_path):
    look = StationLook()
    for i in range(300):
        look.observe(i * 60_000, 40 if i % 2 else 130, 72)
    det = StationDetector(cfg(), look=look)
    for i in range(8):
        det.frame(i * 1000, frame(scene(), i))
    save_look(tmp_path / "s.json", look)
    again = load_look(tmp_path / "s.json")
    assert again.learned_split(200) == pytest.approx(look.learned_split(200))
    assert again.lit is not None and again.lit.count == look.lit.count
    assert load_look(tmp_path / "missing.json").samples == 0


def test_operator_looks_override_learning():
    from vms.analysis.calibration import LabelledLook

    cal = StationCalibration(looks=[LabelledLook(label="open", at_ms=0, luma=150),
                                    LabelledLook(label="closed", at_ms=0, luma=90)])
    split, source = StationLook().split(cfg(), cal)
    assert source == "operator" and 100 < split < 140


def test_samples_report_features():
    run = Run(StationDetector(cfg()))
    run.feed([frame(scene(), 0)])
    sample = run.events[0]
    assert isinstance(sample, Sampled) and sample.vote == "open"
    assert {"luma", "laplacian", "edges", "cast", "split"} <= set(sample.features)


def test_a_camera_whose_picture_changes_shape_is_still_analysed():
    """The reference learned from 16:9 pictures cannot be compared with 4:3 ones (a new camera, a new
    resolution): the samples go on (they raised TypeError, and the station's analysis stopped), and
    the reference is learned again from the new pictures."""
    det = StationDetector(cfg())
    run = Run(det)
    warm(run, scene())
    assert det.look.lit is not None and det.look.lit.ready
    rng = np.random.default_rng(3)
    four_three = np.clip(120 + rng.normal(0, 40, (240, 320)), 16, 235).astype(np.uint8)
    chroma = np.full((120, 160), 128, np.uint8)
    for i in range(8):
        events = det.frame((100 + i) * 1000, four_three, chroma, chroma)
        assert isinstance(events[0], Sampled)
    assert det.look.lit.thumb.shape == compute_features(
        reduce_planes(four_three, chroma, chroma, det.cfg.analysis_width, det.mask_for(320, 240)),
        det.cfg.overexposed_luma).edge_thumb.shape


def test_rolling_percentile_is_numpys_over_the_last_values():
    # The activity tracker's quiet level: the 10th percentile of the last buckets, as np.percentile
    # gives it, through evictions, repeated values, a clear and odd lengths.
    rng = np.random.default_rng(7)
    for maxlen, percent in ((10, 10), (150, 10), (7, 50), (33, 90)):
        rolling = RollingPercentile(maxlen, percent)
        window: list[float] = []
        for i in range(600):
            value = float(rng.integers(0, 5)) if i % 3 == 0 else float(rng.random() * 1000)
            rolling.append(value)
            window = (window + [value])[-maxlen:]
            assert len(rolling) == len(window)
            assert rolling.value() == pytest.approx(float(np.percentile(window, percent)), rel=1e-12, abs=1e-12)
            if i == 300:
                rolling.clear()
                window = []
                with pytest.raises(ValueError):
                    rolling.value()
