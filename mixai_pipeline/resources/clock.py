"""The time governance decisions are taken at: the wall clock, or a fixed instant for tests and replays."""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg
from pydantic import Field


class Clock(dg.ConfigurableResource):
    """``now()`` in UTC; ``frozen_at`` (ISO 8601 with an offset) pins it, so that a test can walk a purge or a
    withdrawal through days 0..31 without waiting for them."""

    frozen_at: str | None = Field(default=None, description="ISO 8601 instant with an offset; unset: the wall clock")

    def now(self) -> datetime:
        if self.frozen_at is None:
            return datetime.now(timezone.utc)
        moment = datetime.fromisoformat(self.frozen_at)
        if moment.tzinfo is None:
            raise ValueError(f"Clock.frozen_at {self.frozen_at!r} needs a UTC offset")
        return moment.astimezone(timezone.utc)
