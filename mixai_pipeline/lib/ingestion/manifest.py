"""``manifest.json``: what the app writes last into ``uploads/<job_id>/`` to mark an upload complete.

Example::

    {"job_id": "7b1e…", "user_id": "0c9d…", "plan": "standard",
     "consent": {"qa": true, "training": false},
     "bpm": 92.0, "key": "F#m", "preset": "wide_pop",
     "created_at": "2026-11-21T10:15:00+09:00"}

Unknown fields are refused: a typo (``"consnet"``) must not silently mean "no consent".
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, ValidationError

PLANS = ("freetrial", "lite", "standard", "creator")
MAX_MANIFEST_BYTES = 64 * 1024


class RejectError(Exception):
    """An upload that cannot be accepted: ``code`` for machines, ``reason`` for people."""

    def __init__(self, code: str, reason: str, user_id: UUID | None = None):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.user_id = user_id  # the owner, when a rejected manifest still names one


class Consent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    qa: StrictBool = Field(description="may be used for quality assurance")
    training: StrictBool = Field(description="may be used to train models")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: UUID
    user_id: UUID
    plan: Literal["freetrial", "lite", "standard", "creator"]
    consent: Consent
    created_at: AwareDatetime
    bpm: float | None = Field(default=None, gt=20, lt=400, allow_inf_nan=False)
    key: str | None = Field(
        default=None, max_length=16,
        pattern=r"^[A-G](#|b|♯|♭)?\s?(m|maj|min|major|minor)?$",
        description="musical key, e.g. 'C', 'F#m', 'Bb major'")
    preset: str | None = Field(default=None, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")

    @property
    def uploaded_at(self) -> datetime:
        return self.created_at


def _describe(error: dict) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "manifest"
    kind = error["type"]
    if kind == "missing":
        return f"'{location}' is missing"
    if kind == "extra_forbidden":
        return f"unknown field '{location}'"
    if kind == "literal_error" and location == "plan":
        return f"unknown plan {error['input']!r} (expected one of {', '.join(PLANS)})"
    return f"'{location}': {error['msg']}"


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and validate manifest bytes; raise RejectError with a reason a person understands."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise RejectError("manifest_unreadable",
                          f"manifest.json is {len(raw):,} bytes; the limit is {MAX_MANIFEST_BYTES:,}")
    if not raw.strip():
        raise RejectError("manifest_unreadable", "manifest.json is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RejectError("manifest_unreadable", "manifest.json is not UTF-8 text") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise RejectError("manifest_unreadable",
                          f"manifest.json is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
                          ) from None
    if not isinstance(document, dict):
        raise RejectError("manifest_invalid",
                          f"manifest.json must be a JSON object, not {type(document).__name__}")
    try:
        return Manifest.model_validate(document)
    except ValidationError as err:
        problems = [_describe(e) for e in err.errors()]
        code = "unknown_plan" if any(p.startswith("unknown plan") for p in problems) else "manifest_invalid"
        raise RejectError(code, "manifest.json is invalid: " + "; ".join(problems)) from None


def peek_user_id(raw: bytes) -> UUID | None:
    """Best-effort user id from a manifest that failed validation (so a reject can name its owner)."""
    try:
        return UUID(str(json.loads(raw.decode("utf-8"))["user_id"]))
    except Exception:
        return None
