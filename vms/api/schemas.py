"""Response and request bodies shared by several routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
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


# Times in requests: ISO 8601 (no offset = Asia/Shanghai) or epoch milliseconds, parsed by
# vms.api.timeparse. The format names that in the OpenAPI schema (and lets the schemathesis test give
# such fields odd times); the length limit refuses a 4,300-digit "time" before anything reads it.
TIME_FORMAT = "local-time-or-epoch-ms"
TIME_MAX_LENGTH = 64
TIME_DESCRIPTION = "ISO 8601; without offset = Asia/Shanghai; or epoch milliseconds"


# A time in a request body: `start: TimeText = Field(description=..., examples=[...])`.
TimeText = Annotated[str, Field(max_length=TIME_MAX_LENGTH, json_schema_extra={"format": TIME_FORMAT})]


def time_query(description: str = TIME_DESCRIPTION):
    """A query parameter that is a time."""
    return Query(description=description, max_length=TIME_MAX_LENGTH, json_schema_extra={"format": TIME_FORMAT})


REASON_FIELD = Field(min_length=2, max_length=500, description="why the footage is needed (调用事由), logged")


class FootageRangeIn(ApiModel):
    """A time range of footage and the stated reason for looking at it (playback, export)."""

    start: TimeText = Field(description=TIME_DESCRIPTION, examples=["2026-03-01T08:30:00"])
    end: TimeText = Field(description=TIME_DESCRIPTION, examples=["2026-03-01T08:45:00"])
    reason: str = REASON_FIELD
