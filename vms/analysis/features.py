"""Features of one sampled picture, computed on a small gray image (and small chroma planes).

Masked pixels (privacy masks, outside detection zones) are set to zero first and every statistic
is taken over the analysed pixels only, so nothing behind a mask can influence a result.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

EDGE_THUMB_WIDTH = 32
EDGE_MAGNITUDE = 24.0  # Sobel magnitude (small image) that counts as an edge pixel


@dataclass
class Picture:
    """A sample reduced to what the detectors need."""

    gray: np.ndarray  # uint8, masked pixels zero
    valid: np.ndarray  # bool, analysed pixels
    inner: np.ndarray  # bool, analysed pixels away from the mask border (for gradients)
    u: np.ndarray | None  # chroma planes at the same size, or None (gray-only source)
    v: np.ndarray | None


@dataclass
class Features:
    luma: float  # mean Y of analysed pixels
    std: float
    p99: float
    bright_fraction: float
    laplacian: float  # variance of the Laplacian: sharpness
    edge_density: float
    cast_offset: float  # distance of mean chroma from neutral
    cast_factor: float  # offset over chroma spread
    edge_thumb: np.ndarray  # normalised gradient-magnitude thumbnail, for scene matching

    def as_dict(self) -> dict[str, float]:
        return {
            "luma": round(self.luma, 2), "std": round(self.std, 2), "p99": round(self.p99, 1),
            "bright": round(self.bright_fraction, 4), "laplacian": round(self.laplacian, 1),
            "edges": round(self.edge_density, 4), "cast": round(self.cast_offset, 2),
            "cast_k": round(self.cast_factor, 2),
        }


def small_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    scale = long_side / max(width, height)
    return max(8, round(width * scale)), max(8, round(height * scale))


def reduce_planes(
    y: np.ndarray, u: np.ndarray | None, v: np.ndarray | None, long_side: int, mask: np.ndarray | None
) -> Picture:
    """Downscale the planes (area averaging) and apply the analysis mask (True = analysed)."""
    h, w = y.shape
    size = small_size(w, h, long_side)
    gray = cv2.resize(y, size, interpolation=cv2.INTER_AREA)
    su = cv2.resize(u, size, interpolation=cv2.INTER_AREA) if u is not None else None
    sv = cv2.resize(v, size, interpolation=cv2.INTER_AREA) if v is not None else None
    if mask is None:
        valid = np.ones(gray.shape, bool)
        inner = valid
    else:
        if mask.shape != gray.shape:
            raise ValueError(f"mask {mask.shape} does not match the picture {gray.shape}")
        valid = mask
        gray = np.where(valid, gray, 0).astype(np.uint8)
        if su is not None and sv is not None:
            su = np.where(valid, su, 128).astype(np.uint8)
            sv = np.where(valid, sv, 128).astype(np.uint8)
        inner = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return Picture(gray, valid, inner, su, sv)


def compute_features(pic: Picture, overexposed_luma: float) -> Features:
    vals = pic.gray[pic.valid]
    if vals.size == 0:
        raise ValueError("the analysis mask leaves no pixel to analyse")
    g = pic.gray.astype(np.float32)
    luma = float(vals.mean())
    std = float(vals.std())
    p99 = float(np.percentile(vals, 99))
    bright = float((vals >= overexposed_luma).mean())
    inner = pic.inner if pic.inner.any() else pic.valid
    lap = cv2.Laplacian(g, cv2.CV_32F)
    laplacian = float(lap[inner].var())
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    mag = cv2.magnitude(gx, gy)
    mag[~inner] = 0
    edge_density = float((mag[inner] > EDGE_MAGNITUDE).mean())
    h, w = g.shape
    thumb = cv2.resize(mag, (EDGE_THUMB_WIDTH, max(4, round(EDGE_THUMB_WIDTH * h / w))), interpolation=cv2.INTER_AREA)
    edge_thumb = normalise(thumb.ravel())
    cast_offset = cast_factor = 0.0
    if pic.u is not None and pic.v is not None:
        cu = pic.u[pic.valid].astype(np.float32) - 128.0
        cv = pic.v[pic.valid].astype(np.float32) - 128.0
        mu, mv = float(cu.mean()), float(cv.mean())
        cast_offset = float(np.hypot(mu, mv))
        spread = float(np.hypot(np.abs(cu - mu).mean(), np.abs(cv - mv).mean()))
        cast_factor = cast_offset / max(spread, 0.5)
    return Features(luma, std, p99, bright, laplacian, edge_density, cast_offset, cast_factor, edge_thumb)


def normalise(vec: np.ndarray) -> np.ndarray:
    v = vec.astype(np.float32) - float(vec.mean())
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-6 else np.zeros_like(v)


def match(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """Normalised cross-correlation of two normalised thumbnails (1 = same structure)."""
    if a is None or b is None or a.shape != b.shape:
        return None
    if not a.any() or not b.any():
        return 0.0
    return float(np.dot(a, b))


def mean_abs_diff(a: Picture, b: Picture) -> float:
    if a.gray.shape != b.gray.shape:
        return float("inf")
    both = a.valid & b.valid
    if not both.any():
        return float("inf")
    return float(np.abs(a.gray[both].astype(np.int16) - b.gray[both].astype(np.int16)).mean())


def motion_fraction(a: Picture, b: Picture, pixel_delta: float) -> float:
    """Share of analysed pixels that changed between two samples, after removing a global luma shift."""
    if a.gray.shape != b.gray.shape:
        return 0.0
    both = a.valid & b.valid
    if not both.any():
        return 0.0
    ga = cv2.GaussianBlur(a.gray, (3, 3), 0)[both].astype(np.float32)
    gb = cv2.GaussianBlur(b.gray, (3, 3), 0)[both].astype(np.float32)
    d = (ga - ga.mean()) - (gb - gb.mean())
    return float((np.abs(d) > pixel_delta).mean())
