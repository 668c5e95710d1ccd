"""Operator calibration of one station's analysis, stored in Station.calibration (JSON).

Zones and privacy masks are polygons in normalised image coordinates (0..1, x to the right, y down).
With no zone the whole picture is analysed; privacy masks are always cut out, before any feature.
Labelled looks are what the operator marked as "open" or "closed" on a snapshot; overrides
change analysis settings for this station only (e.g. a longer sample interval).
"""

from __future__ import annotations

from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vms.core.errors import ConfigError
from vms.core.settings import AnalysisSettings

Point = tuple[float, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Polygon(_Strict):
    points: list[Point] = Field(min_length=3, max_length=64)
    name: str | None = Field(default=None, max_length=64)

    @field_validator("points")
    @classmethod
    def _normalised(cls, v: list[Point]) -> list[Point]:
        for i, (x, y) in enumerate(v):
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ValueError(f"point {i} ({x}, {y}) is outside the picture: use 0..1 for x and y")
        return v


class LabelledLook(_Strict):
    """Features of a snapshot the operator marked as open or closed (no image is stored)."""

    label: Literal["open", "closed"]
    at_ms: int = Field(ge=0)
    luma: float = Field(ge=0, le=255)
    edge_thumb: list[float] = Field(default_factory=list, max_length=4096)


class StationCalibration(_Strict):
    zones: list[Polygon] = Field(default_factory=list, max_length=16)
    privacy_masks: list[Polygon] = Field(default_factory=list, max_length=16)
    looks: list[LabelledLook] = Field(default_factory=list, max_length=32)
    overrides: dict[str, Any] = Field(default_factory=dict)
    # Relearn the reference view from this time on (after the camera was moved on purpose).
    reference_reset_ms: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _overrides_known(self) -> StationCalibration:
        if self.overrides:
            known = set(AnalysisSettings.model_fields)
            unknown = sorted(set(self.overrides) - known)
            if unknown:
                raise ValueError(f"unknown analysis setting(s) in overrides: {', '.join(unknown)}")
            try:
                AnalysisSettings.model_validate({**AnalysisSettings().model_dump(), **self.overrides})
            except ValidationError as exc:
                first = exc.errors()[0]
                raise ValueError(f"overrides.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        return self

    def effective_settings(self, base: AnalysisSettings) -> AnalysisSettings:
        """The station's settings: the base with this station's overrides applied."""
        if not self.overrides:
            return base
        return AnalysisSettings.model_validate({**base.model_dump(), **self.overrides})


def parse_calibration(raw: dict | None, where: str = "calibration") -> StationCalibration:
    """Validate calibration JSON; raise ConfigError naming each problem."""
    try:
        return StationCalibration.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(
            [f"{where}: {'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors()]
        ) from None


def analysis_mask(calibration: StationCalibration, width: int, height: int) -> np.ndarray | None:
    """Boolean mask (True = analysed) at the given size, or None when everything is analysed."""
    if not calibration.zones and not calibration.privacy_masks:
        return None
    scale = np.array([width, height], dtype=np.float64)

    def raster(poly: Polygon) -> np.ndarray:
        return np.round(np.array(poly.points) * scale - 0.5).astype(np.int32)

    if calibration.zones:
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [raster(z) for z in calibration.zones], 1)
    else:
        mask = np.ones((height, width), np.uint8)
    if calibration.privacy_masks:
        # Draw the privacy polygons generously (with their outline) so that no masked pixel leaks.
        cv2.fillPoly(mask, [raster(m) for m in calibration.privacy_masks], 0)
        cv2.polylines(mask, [raster(m) for m in calibration.privacy_masks], True, 0, 1)
    return mask.astype(bool)
