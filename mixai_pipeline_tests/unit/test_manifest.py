import json
import uuid

import pytest

from mixai_pipeline import settings
from mixai_pipeline.lib.ingestion.manifest import PLANS, RejectError, parse_manifest, peek_user_id
from mixai_pipeline_tests.conftest import manifest_for


def raw(document) -> bytes:
    return json.dumps(document).encode()


def test_valid_manifest_parses_with_optional_fields():
    job = uuid.uuid4()
    m = parse_manifest(raw(manifest_for(job, bpm=92.5, key="F#m", preset="wide_pop")))
    assert m.job_id == job and m.plan == "standard" and m.consent.training is True
    assert m.bpm == 92.5 and m.key == "F#m" and m.preset == "wide_pop"
    assert m.created_at.tzinfo is not None


@pytest.mark.parametrize("key", ["C", "F#m", "Bb major", "A minor", "Ebmaj", "G♯m"])
def test_key_notations_accepted(key):
    assert parse_manifest(raw(manifest_for(uuid.uuid4(), key=key))).key == key


@pytest.mark.parametrize(
    "mutate, code, words",
    [
        (lambda d: d.pop("user_id"), "manifest_invalid", "'user_id' is missing"),
        (lambda d: d.update(plan="gold"), "unknown_plan", "unknown plan 'gold'"),
        (lambda d: d.update(consnet={"qa": True}), "manifest_invalid", "unknown field 'consnet'"),
        (lambda d: d.update(consent={"qa": "yes", "training": True}), "manifest_invalid", "consent.qa"),
        (lambda d: d.update(consent={"qa": True}), "manifest_invalid", "'consent.training' is missing"),
        (lambda d: d.update(created_at="2026-11-21T10:00:00"), "manifest_invalid", "created_at"),
        (lambda d: d.update(job_id="not-a-uuid"), "manifest_invalid", "job_id"),
        (lambda d: d.update(bpm=0), "manifest_invalid", "bpm"),
        (lambda d: d.update(bpm=float("nan")), "manifest_invalid", "bpm"),
        (lambda d: d.update(key="H#"), "manifest_invalid", "key"),
        (lambda d: d.update(preset="../../etc"), "manifest_invalid", "preset"),
    ],
)
def test_invalid_manifests_say_what_is_wrong(mutate, code, words):
    document = manifest_for(uuid.uuid4())
    mutate(document)
    with pytest.raises(RejectError) as err:
        parse_manifest(json.dumps(document, allow_nan=True).encode())
    assert err.value.code == code
    assert words in err.value.reason


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"\xff\xfe{", "not UTF-8"),
        (b'{"job_id": ', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"{" + b" " * 70_000 + b"}", "limit"),
    ],
)
def test_unreadable_manifests(data, words):
    with pytest.raises(RejectError) as err:
        parse_manifest(data)
    assert words in err.value.reason


def test_plans_match_the_schema():
    sql = (settings.SQL_DIR / "0001_core_schema.sql").read_text()
    for plan in PLANS:
        assert f"('{plan}'," in sql


def test_peek_user_id_is_best_effort():
    user = uuid.uuid4()
    assert peek_user_id(raw({"user_id": str(user), "plan": "gold"})) == user
    assert peek_user_id(b"garbage") is None
