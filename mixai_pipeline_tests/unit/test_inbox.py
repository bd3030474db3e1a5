"""The inbox grouping and the sensor cursor, on listings built by hand."""

from datetime import datetime, timedelta, timezone

from mixai_pipeline.lib.ingestion.inbox import InboxCursor, group_uploads, partition_key, uploads_of_day
from mixai_pipeline.lib.storage.object_store import ObjectInfo

TZ = "Asia/Tokyo"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)  # 21:00 in Tokyo


def upload(name: str, at: datetime, manifest: bool = True) -> list[ObjectInfo]:
    objects = [ObjectInfo(f"uploads/{name}/inst.wav", 10, at - timedelta(minutes=2)),
               ObjectInfo(f"uploads/{name}/vocal.wav", 10, at - timedelta(minutes=1))]
    if manifest:
        objects.append(ObjectInfo(f"uploads/{name}/manifest.json", 1, at))
    return objects


def test_partition_key_is_the_tokyo_day():
    assert partition_key(datetime(2026, 11, 21, 14, 59, tzinfo=timezone.utc), TZ) == "2026-11-21"
    assert partition_key(datetime(2026, 11, 21, 15, 0, tzinfo=timezone.utc), TZ) == "2026-11-22"


def test_grouping_ignores_loose_objects():
    listing = upload("a", NOW) + [ObjectInfo("uploads/loose.wav", 1, NOW), ObjectInfo("other/x", 1, NOW)]
    grouped = group_uploads(listing)
    assert list(grouped) == ["a"]
    assert grouped["a"].manifest.key == "uploads/a/manifest.json"


def test_uploads_of_day_splits_ready_and_pending():
    listing = upload("done", NOW - timedelta(hours=1)) + upload("partial", NOW - timedelta(hours=1), manifest=False)
    ready, pending = uploads_of_day(group_uploads(listing).values(), "2026-11-21", TZ, NOW)
    assert [u.name for u in ready] == ["done"] and [u.name for u in pending] == ["partial"]
    # A day later the partial upload is abandoned: ready (to be rejected), still on its own day.
    ready, pending = uploads_of_day(group_uploads(listing).values(), "2026-11-21", TZ, NOW + timedelta(days=1))
    assert {u.name for u in ready} == {"done", "partial"} and pending == []


def test_cursor_hands_each_upload_over_once_across_ticks_and_restarts():
    listing = upload("a", NOW - timedelta(minutes=5)) + upload("b", NOW - timedelta(days=1))
    events, cursor = InboxCursor().advance(group_uploads(listing).values(), NOW, TZ)
    assert sorted((e.upload.name, e.partition_key) for e in events) == [("a", "2026-11-21"), ("b", "2026-11-20")]

    # Same listing, restored from JSON (a restart): nothing new.
    restored = InboxCursor.from_json(cursor.to_json())
    again, same = restored.advance(group_uploads(listing).values(), NOW, TZ)
    assert again == [] and same.to_json() == cursor.to_json()

    # A new upload: only it is handed over.
    listing += upload("c", NOW + timedelta(minutes=1))
    events, cursor = restored.advance(group_uploads(listing).values(), NOW + timedelta(minutes=2), TZ)
    assert [e.upload.name for e in events] == ["c"]


def test_cursor_catches_late_listed_objects_within_the_lag_and_stays_small():
    listing = upload("first", NOW)
    _, cursor = InboxCursor().advance(group_uploads(listing).values(), NOW, TZ)
    # An upload whose manifest time is 10 min older than the watermark shows up only now.
    listing += upload("late", NOW - timedelta(minutes=10))
    events, cursor = cursor.advance(group_uploads(listing).values(), NOW + timedelta(minutes=1), TZ)
    assert [e.upload.name for e in events] == ["late"]
    # Much later, old events fall out of the cursor: its size does not grow with the inbox.
    listing += upload("much_later", NOW + timedelta(hours=3))
    _, cursor = cursor.advance(group_uploads(listing).values(), NOW + timedelta(hours=3, minutes=1), TZ)
    assert set(cursor.recent) == {f"much_later@{(NOW + timedelta(hours=3)).isoformat()}"}


def test_abandoned_upload_becomes_an_event_once_its_timeout_passes():
    listing = upload("partial", NOW - timedelta(hours=2), manifest=False)
    events, cursor = InboxCursor().advance(group_uploads(listing).values(), NOW, TZ)
    assert events == []
    events, cursor = cursor.advance(group_uploads(listing).values(), NOW + timedelta(hours=23), TZ)
    assert [e.upload.name for e in events] == ["partial"]
    assert events[0].partition_key == "2026-11-21"


def test_run_keys_differ_per_partition_and_per_cursor():
    _, c1 = InboxCursor().advance(group_uploads(upload("a", NOW)).values(), NOW, TZ)
    _, c2 = c1.advance(group_uploads(upload("a", NOW) + upload("b", NOW)).values(), NOW, TZ)
    assert c1.run_key("2026-11-21") != c1.run_key("2026-11-20")
    assert c1.run_key("2026-11-21") != c2.run_key("2026-11-21")
    assert c1.run_key("2026-11-21") == InboxCursor.from_json(c1.to_json()).run_key("2026-11-21")
