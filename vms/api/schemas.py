"""Response and request bodies shared by several routers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(ApiModel):
    detail: str


class UserOut(ApiModel):
    id: int
    username: str
    display_name: str | None
    role: str
    towns: list[str] | None = Field(description="null: every town")
    disabled: bool
    created_at: str | None = None


class Me(ApiModel):
    username: str
    role: str
    towns: list[str] | None
    kind: str = Field(description="session or apikey")
    permissions: list[str]


REASON_FIELD = Field(min_length=2, max_length=500, description="why the footage is needed (调用事由), logged")


class FootageRangeIn(ApiModel):
    """A time range of footage and the stated reason for looking at it (playback, export)."""

    start: str = Field(description="ISO 8601; without offset = Asia/Shanghai", examples=["2026-03-01T08:30:00"])
    end: str = Field(description="ISO 8601; without offset = Asia/Shanghai", examples=["2026-03-01T08:45:00"])
    reason: str = REASON_FIELD
