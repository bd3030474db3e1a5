"""MIDI loop packs in the object store and their registry in PostgreSQL.

A pack is ``midi/packs/<pack_id>/``: its MIDI files under their relative paths, and ``metadata.csv``
(the Groove MIDI ``info.csv`` columns), written last: it is what marks the pack complete, as the
manifest does for an audio upload. ``import_pack`` uploads a local folder that way; ``list_packs`` is what
the sensor sees; ``register_pack`` records every file (digest, size, metadata row) in ``midi_files``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, Engine, text

from mixai_pipeline.lib.midi.stage1 import PackMetadataError, read_pack_metadata
from mixai_pipeline.lib.storage.database import write_audit
from mixai_pipeline.lib.storage.object_store import ObjectInfo, ObjectStore, key_problem

PACKS_PREFIX = "midi/packs/"
METADATA_NAME = "metadata.csv"
MIDI_SUFFIXES = (".mid", ".midi")
PACK_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_METADATA_BYTES = 64 << 20


class PackError(ValueError):
    """A pack that cannot be imported or registered at all (bad name, unreadable metadata)."""


def check_pack_id(pack_id: str) -> str:
    if not PACK_ID_PATTERN.match(pack_id or ""):
        raise PackError(f"pack name {pack_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                        "letter or digit")
    return pack_id


def pack_prefix(pack_id: str) -> str:
    return f"{PACKS_PREFIX}{check_pack_id(pack_id)}/"


@dataclass
class PackListing:
    pack_id: str
    metadata: ObjectInfo | None = None
    files: list[ObjectInfo] = field(default_factory=list)  # everything but the metadata

    @property
    def complete(self) -> bool:
        return self.metadata is not None

    @property
    def version(self) -> str:
        """Changes whenever the metadata is rewritten (a re-import): the sensor's run key."""
        if self.metadata is None:
            return ""
        return self.metadata.etag or self.metadata.last_modified.isoformat()


def list_packs(store: ObjectStore) -> dict[str, PackListing]:
    """Every pack under ``midi/packs/`` (complete or still uploading); objects outside a valid pack name
    are skipped (they cannot be a partition key)."""
    packs: dict[str, PackListing] = {}
    for info in store.list(PACKS_PREFIX):
        pack_id, _, relative = info.key[len(PACKS_PREFIX):].partition("/")
        if not relative or not PACK_ID_PATTERN.match(pack_id):
            continue
        listing = packs.setdefault(pack_id, PackListing(pack_id))
        if relative == METADATA_NAME:
            listing.metadata = info
        else:
            listing.files.append(info)
    return packs


def _local_pack_files(folder: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in MIDI_SUFFIXES:
            yield path.relative_to(folder).as_posix(), path


def import_pack(store: ObjectStore, folder: Path, pack_id: str, *, metadata: Path | None = None,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Upload every .mid/.midi file under ``folder`` (relative paths kept) and then its metadata CSV
    (``metadata`` or ``folder/metadata.csv`` or ``folder/info.csv``) to ``midi/packs/<pack_id>/``.
    The CSV is read first, so a pack whose metadata is unreadable is refused before anything is written.
    Files whose names the store refuses are reported, not uploaded."""
    folder = Path(folder)
    prefix = pack_prefix(pack_id)
    if not folder.is_dir():
        raise PackError(f"{folder} is not a folder")
    candidates = [metadata] if metadata else [folder / METADATA_NAME, folder / "info.csv"]
    csv_path = next((p for p in candidates if p and Path(p).is_file()), None)
    if csv_path is None:
        raise PackError(f"no metadata CSV: pass --metadata or put {METADATA_NAME} (or info.csv) in {folder}")
    csv_bytes = Path(csv_path).read_bytes()
    try:
        rows = read_pack_metadata(csv_bytes)
    except PackMetadataError as err:
        raise PackError(f"{csv_path}: {err}") from None
    files = list(_local_pack_files(folder))
    uploaded, refused, total_bytes = 0, [], 0
    for done, (relative, path) in enumerate(files, start=1):
        problem = key_problem(prefix + relative)
        if problem:
            refused.append((relative, problem))
            continue
        total_bytes += store.put_file(prefix + relative, path, "audio/midi").size
        uploaded += 1
        if progress:
            progress(done, len(files))
    store.put_bytes(prefix + METADATA_NAME, csv_bytes, "text/csv")  # last: the pack is now complete
    return {"pack_id": pack_id, "files": uploaded, "bytes": total_bytes, "metadata_rows": len(rows),
            "refused": refused, "without_metadata": sorted(set(r for r, _ in files) - set(rows))}


@dataclass
class PackRegistration:
    pack_id: str
    files: int = 0
    bytes: int = 0
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (path, code, reason)
    metadata_rows: int = 0


def read_metadata(store: ObjectStore, listing: PackListing) -> tuple[dict[str, dict], str]:
    """The pack's metadata rows and the CSV's sha256; PackError when it is missing or unreadable."""
    if listing.metadata is None:
        raise PackError(f"pack {listing.pack_id!r} has no {METADATA_NAME} yet (still uploading?)")
    data = store.get_bytes(listing.metadata.key, max_bytes=MAX_METADATA_BYTES)
    try:
        return read_pack_metadata(data), hashlib.sha256(data).hexdigest()
    except PackMetadataError as err:
        raise PackError(f"pack {listing.pack_id!r}: {err}") from None


def register_pack(store: ObjectStore, engine: Engine, listing: PackListing, *, actor: str,
                  run_id: str | None = None) -> PackRegistration:
    """Record the pack and each of its files: size, sha256, md5, the metadata row. Files that are not
    MIDI by name are rejected here; Stage 1 judges the content. Re-registering rewrites the same rows
    (files that disappeared from the pack are removed)."""
    metadata, metadata_sha = read_metadata(store, listing)
    report = PackRegistration(listing.pack_id, metadata_rows=len(metadata))
    rows = []
    for info in sorted(listing.files, key=lambda i: i.key):
        relative = info.key[len(pack_prefix(listing.pack_id)):]
        data = store.get_bytes(info.key)
        status, code, reason = "registered", None, None
        if not relative.lower().endswith(MIDI_SUFFIXES):
            status, code, reason = "rejected", "not_midi_file", f"{relative!r} is not a .mid/.midi file"
            report.rejected.append((relative, code, reason))
        rows.append({"pack": listing.pack_id, "path": relative, "size": len(data),
                     "sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest(),
                     "source": json.dumps(metadata.get(relative, {})), "status": status,
                     "stage": "midi_packs" if code else None, "code": code, "reason": reason})
        report.files += 1
        report.bytes += len(data)
    with engine.begin() as conn:
        _upsert_pack(conn, listing, metadata_sha, report)
        conn.execute(text("DELETE FROM midi_files WHERE pack_id = :pack"), {"pack": listing.pack_id})
        if rows:
            conn.execute(text(
                "INSERT INTO midi_files (pack_id, path, size_bytes, sha256, md5, source, status, reject_stage, "
                "reject_code, reject_reason) VALUES (:pack, :path, :size, :sha256, :md5, CAST(:source AS jsonb), "
                ":status, :stage, :code, :reason)"), rows)
        write_audit(conn, actor=actor, action="midi_pack.registered", target_type="midi_pack",
                    target_id=listing.pack_id, details={"files": report.files, "bytes": report.bytes,
                                                        "rejected": len(report.rejected), "run_id": run_id})
    return report


def _upsert_pack(conn: Connection, listing: PackListing, metadata_sha: str, report: PackRegistration) -> None:
    conn.execute(text(
        "INSERT INTO midi_packs (pack_id, metadata_key, metadata_sha256, files, bytes) "
        "VALUES (:pack, :key, :sha, :files, :bytes) ON CONFLICT (pack_id) DO UPDATE SET "
        "metadata_key = EXCLUDED.metadata_key, metadata_sha256 = EXCLUDED.metadata_sha256, "
        "files = EXCLUDED.files, bytes = EXCLUDED.bytes, updated_at = now()"),
        {"pack": listing.pack_id, "key": listing.metadata.key, "sha": metadata_sha, "files": report.files,
         "bytes": report.bytes})


def registered_files(conn: Connection, pack_id: str) -> list[str]:
    """Relative paths of the pack's files that Stage 1 should read (not rejected at registration)."""
    return list(conn.execute(text(
        "SELECT path FROM midi_files WHERE pack_id = :pack AND reject_stage IS DISTINCT FROM 'midi_packs' "
        "ORDER BY path"), {"pack": pack_id}).scalars())


def record_stage1_verdicts(conn: Connection, pack_id: str, rejected: list[tuple[str, str, str]],
                           loops_per_file: dict[str, int]) -> None:
    """Stage 1's verdict per file: rejected with its reason, or parsed with the loops it kept."""
    conn.execute(text(
        "UPDATE midi_files SET status = 'registered', reject_stage = NULL, reject_code = NULL, "
        "reject_reason = NULL, loops = NULL, updated_at = now() "
        "WHERE pack_id = :pack AND reject_stage IS DISTINCT FROM 'midi_packs'"), {"pack": pack_id})
    if rejected:
        conn.execute(text(
            "UPDATE midi_files SET status = 'rejected', reject_stage = 'midi_loops', reject_code = :code, "
            "reject_reason = :reason, loops = 0, updated_at = now() WHERE pack_id = :pack AND path = :path"),
            [{"pack": pack_id, "path": path, "code": code, "reason": reason} for path, code, reason in rejected])
    rejected_paths = {path for path, _, _ in rejected}
    conn.execute(text(
        "UPDATE midi_files SET status = 'parsed', loops = :loops, updated_at = now() "
        "WHERE pack_id = :pack AND path = :path"),
        [{"pack": pack_id, "path": path, "loops": loops_per_file.get(path, 0)}
         for path in registered_files(conn, pack_id) if path not in rejected_paths])
