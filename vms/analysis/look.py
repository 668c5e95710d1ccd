"""What one station looks like, learned from its own samples and persisted between runs.

- A decaying histogram of sample luma (log scale). Once it holds enough samples and two clear modes
  (lights off / lights on), Otsu's split between them replaces the default `open_luma`.
- Reference edge maps of the lit and the dark scene (running means of samples that match), used to
  tell a covered lens, a moved camera and a blurred lens from a normal picture.
Operator looks (marked open/closed snapshots) take precedence over what was learned.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vms.analysis.calibration import StationCalibration
from vms.analysis.features import Features, match, normalise
from vms.core.settings import AnalysisSettings
from vms.db.models import OpenState

LOG_MIN, LOG_MAX, BINS = math.log(12.0), math.log(256.0), 48
REFERENCE_WARMUP = 5  # samples averaged before a reference is used
REFERENCE_RATE = 0.02  # running-mean weight of a new matching sample
REFERENCE_KEEP_MATCH = 0.6  # only samples this similar update the reference


def _bin(luma: float) -> int:
    x = (math.log(max(luma, 12.0)) - LOG_MIN) / (LOG_MAX - LOG_MIN)
    return min(BINS - 1, max(0, int(x * BINS)))


def _bin_luma(i: float) -> float:
    return math.exp(LOG_MIN + (i + 0.5) / BINS * (LOG_MAX - LOG_MIN))


@dataclass
class Reference:
    thumb: np.ndarray
    edges: float
    laplacian: float
    count: int = 1

    def add(self, f: Features) -> None:
        w = 1.0 / (self.count + 1) if self.count < REFERENCE_WARMUP else REFERENCE_RATE
        self.thumb = normalise((1 - w) * self.thumb + w * f.edge_thumb)
        self.edges = (1 - w) * self.edges + w * f.edge_density
        self.laplacian = (1 - w) * self.laplacian + w * f.laplacian
        self.count += 1

    @property
    def ready(self) -> bool:
        return self.count >= REFERENCE_WARMUP

    def to_json(self) -> dict:
        return {"thumb": [round(float(x), 5) for x in self.thumb], "edges": self.edges,
                "laplacian": self.laplacian, "count": self.count}

    @classmethod
    def from_json(cls, d: dict) -> Reference:
        return cls(np.array(d["thumb"], np.float32), float(d["edges"]), float(d["laplacian"]), int(d["count"]))


@dataclass
class StationLook:
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS))
    samples: int = 0
    last_ms: int | None = None
    lit: Reference | None = None
    dark: Reference | None = None
    reference_since_ms: int = 0

    # --- luma split -------------------------------------------------------------------------
    def observe(self, t_ms: int, luma: float, half_life_hours: float) -> None:
        if self.last_ms is not None and t_ms > self.last_ms:
            self.hist *= 0.5 ** ((t_ms - self.last_ms) / 3_600_000 / half_life_hours)
        self.last_ms = t_ms if self.last_ms is None else max(self.last_ms, t_ms)
        self.hist[_bin(luma)] += 1.0
        self.samples += 1

    def learned_split(self, min_samples: int) -> float | None:
        """Otsu's threshold between the dark and the lit mode, or None while not clearly bimodal."""
        if self.samples < min_samples or self.hist.sum() <= 0:
            return None
        p = self.hist / self.hist.sum()
        idx = np.arange(BINS)
        best, best_k = -1.0, None
        for k in range(1, BINS):
            w0, w1 = p[:k].sum(), p[k:].sum()
            if w0 < 0.05 or w1 < 0.05:
                continue
            m0, m1 = (p[:k] * idx[:k]).sum() / w0, (p[k:] * idx[k:]).sum() / w1
            between = w0 * w1 * (m0 - m1) ** 2
            if between > best:
                best, best_k = between, (k, m0, m1)
        if best_k is None:
            return None
        k, m0, m1 = best_k
        lo, hi = _bin_luma(m0), _bin_luma(m1)
        if hi / lo < 1.4:  # one mode only (a shop lit day and night): keep the default split
            return None
        return math.sqrt(lo * hi)

    def split(self, cfg: AnalysisSettings, cal: StationCalibration) -> tuple[float, str]:
        """The luma above which a sample looks open, and where it comes from."""
        opens = [lk.luma for lk in cal.looks if lk.label == OpenState.OPEN]
        closeds = [lk.luma for lk in cal.looks if lk.label == OpenState.CLOSED]
        if opens and closeds:
            o, c = float(np.mean(opens)), float(np.mean(closeds))
            if o / max(c, 1.0) >= 1.3:
                return math.sqrt(o * c), "operator"
        learned = self.learned_split(cfg.learn_min_samples)
        if learned is not None:
            return learned, "learned"
        return cfg.open_luma, "default"

    # --- references -------------------------------------------------------------------------
    def reference_for(self, lit: bool) -> Reference | None:
        ref = self.lit if lit else self.dark
        return ref if ref is not None and ref.ready else None

    def learn_reference(self, lit: bool, f: Features, t_ms: int) -> None:
        ref = self.lit if lit else self.dark
        if ref is None or ref.thumb.shape != f.edge_thumb.shape:
            # None yet, or one learned from pictures of another shape (the camera's resolution changed),
            # which no picture now can match: learn it again.
            ref = Reference(f.edge_thumb.copy(), f.edge_density, f.laplacian)
            if lit:
                self.lit = ref
            else:
                self.dark = ref
            if not self.reference_since_ms:
                self.reference_since_ms = t_ms
            return
        if not ref.ready or (match(f.edge_thumb, ref.thumb) or 0.0) >= REFERENCE_KEEP_MATCH:
            ref.add(f)

    def reset_references(self, t_ms: int) -> None:
        self.lit = self.dark = None
        self.reference_since_ms = t_ms

    # --- persistence ------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"version": 1, "hist": [round(float(x), 4) for x in self.hist], "samples": self.samples,
                "last_ms": self.last_ms, "reference_since_ms": self.reference_since_ms,
                "lit": self.lit.to_json() if self.lit else None,
                "dark": self.dark.to_json() if self.dark else None}

    @classmethod
    def from_json(cls, d: dict) -> StationLook:
        hist = np.array(d.get("hist") or [0.0] * BINS, np.float64)
        if hist.shape != (BINS,):
            hist = np.zeros(BINS)
        return cls(hist, int(d.get("samples", 0)), d.get("last_ms"),
                   Reference.from_json(d["lit"]) if d.get("lit") else None,
                   Reference.from_json(d["dark"]) if d.get("dark") else None,
                   int(d.get("reference_since_ms") or 0))


def look_path(data_dir: Path, station_id: str) -> Path:
    return Path(data_dir) / "analysis" / "looks" / f"{station_id}.json"


def load_look(path: Path) -> StationLook:
    """The saved look, or a fresh one if there is none or it cannot be read (it is re-learned)."""
    try:
        return StationLook.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return StationLook()


def look_json(look: StationLook) -> str:
    return json.dumps(look.to_json())


def write_look(path: Path, text: str) -> None:
    """Atomically (write, then rename): a crash leaves the previous look, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_look(path: Path, look: StationLook) -> None:
    write_look(path, look_json(look))
