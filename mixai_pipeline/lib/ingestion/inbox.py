"""The upload inbox in the object store, and the cursor a sensor keeps over it.

An upload is the prefix ``uploads/<job_id>/`` holding ``inst.<ext>``, ``vocal.<ext>`` and, written
last, ``manifest.json``. It *arrives* when its manifest is written: the Asia/Tokyo day of that moment
is the upload's day partition. A prefix whose manifest never comes is *abandoned* once its newest
object is older than ``abandon_after``; it then arrives (to be rejected) on the day of that newest
object. Arrival only depends on what the store lists, so a backfill finds the same uploads again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

from mixai_pipeline.lib.storage.object_store import ObjectInfo

INBOX_PREFIX = "uploads/"
MANIFEST_NAME = "manifest.json"
DEFAULT_ABANDON_AFTER = timedelta(hours=24)
# Objects can show up a little out of order (clock skew between writers, slow PUTs): events this much
# older than the newest one already seen are still looked for.
DEFAULT_CURSOR_LAG = timedelta(hours=1)
_JOB_ID_NAMESPACE = uuid.UUID("6f1d8a52-3c0e-4b7e-9a53-2f0c6d7b9e11")


@dataclass(frozen=True)
class InboxUpload:
    """Everything the store lists under one ``uploads/<name>/`` prefix."""

    name: str
    objects: tuple[ObjectInfo, ...]

    @property
    def prefix(self) -> str:
        return f"{INBOX_PREFIX}{self.name}/"

    @cached_property
    def manifest(self) -> ObjectInfo | None:
        key = self.prefix + MANIFEST_NAME
        return next((o for o in self.objects if o.key == key), None)

    @cached_property
    def newest(self) -> datetime:
        return max(o.last_modified for o in self.objects)

    def ready_at(self, abandon_after: timedelta = DEFAULT_ABANDON_AFTER) -> datetime:
        """When the upload is ready to register: at once with a manifest, else once abandoned."""
        manifest = self.manifest
        return manifest.last_modified if manifest else self.newest + abandon_after

    def arrived_at(self) -> datetime:
        manifest = self.manifest
        return manifest.last_modified if manifest else self.newest

    def job_id(self) -> uuid.UUID:
        """The folder's UUID, or a stable stand-in derived from the name when it is not one."""
        try:
            parsed = uuid.UUID(self.name)
            if str(parsed) == self.name.lower():
                return parsed
        except ValueError:
            pass
        return uuid.uuid5(_JOB_ID_NAMESPACE, self.name)


def group_uploads(objects: Iterable[ObjectInfo]) -> dict[str, InboxUpload]:
    """Group a listing of the inbox by upload folder (objects directly under ``uploads/`` are ignored)."""
    grouped: dict[str, list[ObjectInfo]] = {}
    for info in objects:
        if not info.key.startswith(INBOX_PREFIX):
            continue
        name, sep, _rest = info.key[len(INBOX_PREFIX):].partition("/")
        if sep and name:
            grouped.setdefault(name, []).append(info)
    return {name: InboxUpload(name, tuple(objs)) for name, objs in grouped.items()}


def partition_key(moment: datetime, timezone: str) -> str:
    """The daily partition key (YYYY-MM-DD in ``timezone``) of a moment."""
    return moment.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d")


def uploads_of_day(uploads: Iterable[InboxUpload], day: str, timezone: str, now: datetime,
                   abandon_after: timedelta = DEFAULT_ABANDON_AFTER) -> tuple[list[InboxUpload], list[InboxUpload]]:
    """The uploads that arrived on ``day``: (ready to register, still incomplete)."""
    ready, pending = [], []
    for upload in uploads:
        if partition_key(upload.arrived_at(), timezone) != day:
            continue
        (ready if upload.ready_at(abandon_after) <= now else pending).append(upload)
    return sorted(ready, key=lambda u: u.name), sorted(pending, key=lambda u: u.name)


@dataclass(frozen=True)
class InboxEvent:
    upload: InboxUpload
    ready_at: datetime
    partition_key: str

    @property
    def event_key(self) -> str:
        return f"{self.upload.name}@{self.ready_at.isoformat()}"


@dataclass
class InboxCursor:
    """What a sensor has already handed to runs.

    ``watermark`` is the latest ready time handed over; ``recent`` holds the events within ``lag`` of
    it, so that a late-listed object is still picked up once and an event is never handed over
    twice. The cursor stays small whatever the size of the inbox.
    """

    watermark: datetime | None = None
    recent: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> InboxCursor:
        if not text:
            return cls()
        data = json.loads(text)
        watermark = datetime.fromisoformat(data["watermark"]) if data.get("watermark") else None
        return cls(watermark, dict(data.get("recent", {})))

    def to_json(self) -> str:
        return json.dumps({"watermark": self.watermark.isoformat() if self.watermark else None,
                           "recent": dict(sorted(self.recent.items()))}, separators=(",", ":"))

    def advance(self, uploads: Iterable[InboxUpload], now: datetime, timezone: str,
                abandon_after: timedelta = DEFAULT_ABANDON_AFTER,
                lag: timedelta = DEFAULT_CURSOR_LAG) -> tuple[list[InboxEvent], InboxCursor]:
        """The events not handed over yet, and the cursor after handing them over."""
        floor = self.watermark - lag if self.watermark else None
        events = []
        for upload in uploads:
            ready_at = upload.ready_at(abandon_after)
            if ready_at > now or (floor is not None and ready_at <= floor):
                continue
            event = InboxEvent(upload, ready_at, partition_key(upload.arrived_at(), timezone))
            if event.event_key not in self.recent:
                events.append(event)
        if not events:
            return [], self
        watermark = max([e.ready_at for e in events] + ([self.watermark] if self.watermark else []))
        recent = {**self.recent, **{e.event_key: e.ready_at.isoformat() for e in events}}
        recent = {k: v for k, v in recent.items() if datetime.fromisoformat(v) > watermark - lag}
        return sorted(events, key=lambda e: (e.partition_key, e.upload.name)), InboxCursor(watermark, recent)

    def run_key(self, partition: str) -> str:
        """A run key derived from the cursor: the same tick replayed asks for the same runs."""
        digest = hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
        return f"uploads-{partition}-{digest}"
