"""The notification record (alerts.md): what the flow emits and delivery consumes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.signals import Timestamp


class RuleSummary(BaseModel):
    """What the rule was, in human terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    title: str
    kind: Literal["match", "threshold", "ratio", "distinct", "absence", "shift"]
    description: str | None


class NotificationRecord(BaseModel):
    """One notification of one alert episode; (``alert_id``, ``seq``) identifies it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1]
    alert_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    seq: Annotated[int, Field(ge=1)]
    status: Literal["firing", "resolved"]
    rule: RuleSummary
    severity: Literal["critical", "high", "medium", "low", "info"]
    site: str
    subsystem: str
    group: dict[str, Any]
    summary: str
    started_at: Timestamp
    evaluated_at: Timestamp
    ended_at: Timestamp | None
    value: dict[str, int | float | str]
    suppressed_count: Annotated[int, Field(ge=0)]
    evidence: list[dict[str, Any]]
    evidence_total: Annotated[int, Field(ge=0)]
    link: str
    deliver: list[str]
