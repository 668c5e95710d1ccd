"""When keyframes are decoded: every sample_interval_seconds while settled, sooner on a change."""

from __future__ import annotations

import numpy as np

from tests.test_analysis_offline import make_clip
from vms.analysis.detector import Sampled, StateChanged, StationDetector
from vms.analysis.offline import analyse_file
from vms.analysis.sampling import SampleSchedule
from vms.core.settings import AnalysisSettings


def schedule(steady: float = 60, changing: float = 20, ratio: float = 1.5) -> SampleSchedule:
    return SampleSchedule(AnalysisSettings(sample_interval_seconds=steady, sample_interval_changing_seconds=changing,
                                           sample_size_jump_ratio=ratio))


def sampled_times(s: SampleSchedule, keyframes, unsettled=lambda t: False) -> list[int]:
    """Feed (t_ms, size) keyframes; return the times the schedule decoded."""
    out = []
    for t, size in keyframes:
        if s.due(t, size, lambda t=t: unsettled(t)):
            s.taken(t)
            out.append(t)
    return out


def test_a_settled_picture_is_sampled_at_the_steady_interval():
    s = schedule()
    keys = [(t * 2000, 100_000 + (t % 3) * 20_000) for t in range(200)]  # +-20 %: noise, not a change
    assert sampled_times(s, keys) == list(range(0, 400_000, 60_000))
    assert s.early == 0


def test_a_keyframe_size_jump_samples_early_but_not_before_the_changing_interval():
    s = schedule()
    # Lights out at 70 s: the intra picture of a dark room costs a third; on again at 130 s.
    keys = [(t * 2000, 30_000 if 35 <= t < 65 else 100_000) for t in range(100)]
    times = sampled_times(s, keys)
    # 70 s is only 10 s after the steady sample at 60 s: the dark room is decoded at 80 s. The band
    # fixed then still holds the lit keyframes of 20-68 s, so the lights on again wait for the steady
    # sample at 140 s (in the detector, the vote for closed pending since 80 s samples every 20 s).
    assert times == [0, 60_000, 80_000, 140_000]
    assert s.early == 1

    s = schedule()
    times = sampled_times(s, [(0, 100_000), (10_000, 30_000), (18_000, 30_000), (20_000, 30_000), (40_000, 30_000)])
    assert times == [0, 20_000]  # the jump at 10 s is remembered until 20 s; then the band holds both


def test_a_change_spread_over_many_keyframes_still_samples_early():
    # Exposure ramping down 3 % per keyframe: no step is a jump, but 14 of them leave the band the
    # sample at 0 s fixed, and 14 more the band fixed at 28 s.
    s = schedule()
    times = sampled_times(s, [(k * 2000, int(100_000 * 0.97 ** k)) for k in range(30)])
    assert times == [0, 28_000, 56_000]


def test_keyframe_sizes_that_vary_in_a_cycle_keep_the_steady_schedule():
    # The simulator's looped 14 s clip: seven keyframes of 81-155 KB, again and again. Against the
    # last decoded keyframe alone, 155 vs 94 KB is a 1.66x "change" at every other sample.
    cycle = [155_173, 119_433, 107_696, 93_602, 114_697, 81_309, 95_694]
    s = schedule()
    keys = [(k * 2000, cycle[k % len(cycle)]) for k in range(300)]
    times = sampled_times(s, keys)
    # The first sample's band is its one keyframe, so the cycle looks like a change once; the band
    # fixed at 20 s has seen the whole cycle, and the steady schedule holds from then on.
    assert times == [0, 20_000, *range(80_000, 600_000, 60_000)]
    assert s.early == 1


def test_an_unsettled_detector_is_sampled_at_the_changing_interval():
    s = schedule()
    keys = [(t * 2000, 100_000) for t in range(100)]
    times = sampled_times(s, keys, unsettled=lambda t: 60_000 <= t < 120_000)
    assert times == [0, 60_000, 80_000, 100_000, 160_000]  # settled again at 120 s: 60 s after 100 s


def test_a_clock_step_back_resamples_at_once():
    s = schedule()
    assert sampled_times(s, [(1_000_000, 1000), (1_010_000, 1000), (400_000, 1000), (420_000, 1000)]) == [
        1_000_000, 400_000]


def test_the_detector_is_unsettled_while_a_change_waits_for_its_hysteresis():
    det = StationDetector(AnalysisSettings(hysteresis_seconds=30))
    rng = np.random.default_rng(0)

    def picture(level: float) -> np.ndarray:
        return np.clip(level + rng.normal(0, 3, (90, 160)), 16, 235).astype(np.uint8)

    det.frame(0, picture(30))
    det.frame(30_000, picture(30))
    assert det.states.state == "closed" and not det.unsettled()
    det.frame(40_000, picture(180))  # lights on: a vote for open, not yet the state
    assert det.unsettled()
    events = det.frame(70_000, picture(180))
    assert [e.state for e in events if isinstance(e, StateChanged)] == ["open"]
    assert not det.unsettled()


def test_a_light_switch_is_found_from_the_keyframe_size_before_the_steady_sample(tmp_path):
    # 20 s dark, 20 s lit, a keyframe a second. The first state is confirmed at 6 s (samples every
    # 2 s while it waits for its hysteresis), then every 8 s: 14 s, 22 s. The keyframe's size jumps
    # at 20 s, 6 s after the last sample (>= the 2 s changing interval), and that keyframe is decoded.
    clip = make_clip(tmp_path / "c.mp4", dark_noise=1)
    base = {"sample_interval_seconds": 8, "sample_interval_changing_seconds": 2, "hysteresis_seconds": 5}

    def run(**over) -> tuple[list[tuple[float, str]], list[float]]:
        events = list(analyse_file(clip, AnalysisSettings(**{**base, **over})))
        states = [(e.t_ms / 1000, e.state) for e in events if isinstance(e, StateChanged)]
        return states, [e.t_ms / 1000 for e in events if isinstance(e, Sampled)]

    states, samples = run()
    assert states == [(0, "closed"), (20, "open")]
    assert samples[:6] == [0, 2, 4, 6, 14, 20]
    steady_states, steady_samples = run(sample_size_jump_ratio=100)  # the size signal off
    assert steady_states == [(0, "closed"), (22, "open")]
    assert steady_samples[:6] == [0, 2, 4, 6, 14, 22]
    # Either way far fewer decodes than sampling every 2 s (20).
    assert len(samples) == len(steady_samples) == 10


def test_a_hidden_scene_is_unsettled_only_until_it_makes_the_state_unknown():
    # A frozen picture hides the scene; sampling stays fast until the state is unknown, not for as
    # long as the camera stays frozen.
    det = StationDetector(AnalysisSettings(hysteresis_seconds=30, fault_min_seconds=20, frozen_seconds=20,
                                           hidden_unknown_seconds=60))
    rng = np.random.default_rng(1)
    room = rng.uniform(60, 200, (9, 16)).repeat(10, 0).repeat(10, 1)

    def picture() -> np.ndarray:
        return np.clip(room + rng.normal(0, 3, room.shape), 16, 235).astype(np.uint8)

    for t in range(0, 40, 10):
        det.frame(t * 1000, picture())
    assert det.states.state == "open" and not det.unsettled()
    frozen = picture()
    unsettled = {}
    for t in range(40, 200, 10):
        det.frame(t * 1000, frozen)
        unsettled[t] = det.unsettled()
    assert det.faults["frozen"].active and det.states.state == "unknown"
    assert unsettled[40] is False  # not yet identical to anything
    # Identical from 50 s: the frozen fault rises (raised at 60 s) and hides the scene from 50 s;
    # 60 s later (110 s) the state is unknown and nothing waits any more.
    assert all(unsettled[t] for t in range(50, 110, 10))
    assert not any(unsettled[t] for t in range(110, 200, 10))


def test_a_calibration_edit_reschedules_and_a_reconnect_starts_a_new_band(tmp_path):
    from vms.analysis.calibration import parse_calibration
    from vms.analysis.observer import StationAnalysisObserver
    from vms.core.clock import SimulatedClock

    class Sink:
        def submit(self, station_id, events):
            pass

    obs = StationAnalysisObserver("s", AnalysisSettings(), Sink(), SimulatedClock())
    assert (obs.schedule.steady_ms, obs.schedule.changing_ms) == (60_000, 20_000)
    obs.set_calibration(parse_calibration({"overrides": {"sample_interval_seconds": 90,
                                                         "sample_interval_changing_seconds": 10}}))
    assert (obs.schedule.steady_ms, obs.schedule.changing_ms) == (90_000, 10_000)

    s = obs.schedule
    assert sampled_times(s, [(0, 100_000)]) == [0]
    s.restart()  # a new connection: sampled at once, and the old connection's sizes leave the band
    assert sampled_times(s, [(5_000, 30_000), (20_000, 100_000)]) == [5_000, 20_000]
