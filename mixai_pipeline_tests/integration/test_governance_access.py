"""Roles, 4-eyes approvals, legal holds and signed URLs to original audio, on a real PostgreSQL and real stores."""

from __future__ import annotations

import hashlib
import threading
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from functools import partial

import pytest
from sqlalchemy import exc, text

from mixai_pipeline.lib.governance import access
from mixai_pipeline.lib.governance.access import (
    ApprovalAlreadyDecided,
    ApprovalExpired,
    ApprovalStateError,
    InvalidTarget,
    PermissionDenied,
    SignedURLRefused,
)
from mixai_pipeline_tests.integration import inserts

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)  # the injected clock; tests move it by hand


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture
def team(engine):
    """hana and jun are admins, ken ops, aki support, rio read_only."""
    return inserts.add_team(engine, {"jun": "admin", "ken": "ops", "aki": "support", "rio": "read_only"}, now=T0)


add_job = partial(inserts.add_job, at=T0)


def add_item(conn, job_id: uuid.UUID, user_id: uuid.UUID, kind: str, *, store=None, data: bytes = b"",
             deleted: bool = False) -> int:
    path = f"vault/{job_id}/{kind}.wav"
    if store is not None:
        store.put_bytes(path, data)
    return conn.execute(text(
        "INSERT INTO vault_items (job_id, user_id, kind, clip_kind, path, sha256, bytes, consent_qa, "
        "consent_training, deleted_at) VALUES (:job, :user, :kind, :clip, :path, :sha, :bytes, true, true, :deleted) "
        "RETURNING id"),
        {"job": job_id, "user": user_id, "kind": kind, "clip": "mix" if kind in ("preview", "waveform") else None,
         "path": path, "sha": hashlib.sha256(data).hexdigest(), "bytes": len(data),
         "deleted": T0 if deleted else None}).scalar_one()


def held(engine) -> dict[int, bool]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, legal_hold FROM vault_items ORDER BY id")).all())


def audit(engine, action: str) -> list:
    with engine.connect() as conn:
        return conn.execute(text("SELECT actor, target_type, target_id, details FROM audit_logs "
                                 "WHERE action = :action ORDER BY id"), {"action": action}).all()


def status_of(engine, request_id: int) -> tuple:
    with engine.connect() as conn:
        return conn.execute(text("SELECT status, decided_by FROM approval_requests WHERE id = :id"),
                            {"id": request_id}).one()


# ---------------------------------------------------------------------------------------------- roles

def test_roles_are_checked_with_clear_messages(team):
    with team.connect() as conn:
        assert access.role_of(conn, "aki") == "support"
        assert access.role_of(conn, "nobody") is None
        assert access.require_permission(conn, "ken", "retention.purge") == "ops"
        with pytest.raises(PermissionDenied) as refused:
            access.require_permission(conn, "aki", "legal_hold.request")
        assert str(refused.value) == "aki (support) may not request a legal hold change: needs admin"
        with pytest.raises(PermissionDenied, match=r"rio \(read_only\) may not run the retention purge: "
                                                    r"needs admin or ops"):
            access.require_permission(conn, "rio", "retention.purge")
        with pytest.raises(PermissionDenied, match="'mallory' is not a registered operator and may not change "
                                                   "a user's consent: needs admin or ops or support"):
            access.require_permission(conn, "mallory", "consent.change")
        assert access.require_role(conn, "rio", {"read_only"}, "read") == "read_only"
    assert access.may("read_only", "reports.read") and not access.may("read_only", "consent.change")


def test_operators_bootstrap_with_an_admin_and_only_admins_manage_them(engine):
    with pytest.raises(PermissionDenied, match="the first one must be an admin"):
        access.add_operator(engine, "aki", "support", by="install", now=T0)
    assert access.add_operator(engine, "hana", "admin", by="install", now=T0) is None
    access.add_operator(engine, "ken", "ops", by="hana", now=T0)
    with pytest.raises(PermissionDenied, match=r"ken \(ops\) may not add operators or change their roles"):
        access.add_operator(engine, "aki", "admin", by="ken", now=T0)
    with pytest.raises(PermissionDenied, match="hana is the last admin"):
        access.add_operator(engine, "hana", "ops", by="hana", now=T0)
    assert access.add_operator(engine, "ken", "admin", by="hana", now=T0) == "ops"
    assert access.add_operator(engine, "hana", "ops", by="ken", now=T0) == "admin"  # no longer the last one
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT actor, role FROM operators")).all()) == {"hana": "ops", "ken": "admin"}
    assert [(r.actor, r.target_id, r.details["bootstrap"]) for r in audit(engine, "operator.added")] == [
        ("install", "hana", True), ("hana", "ken", False)]
    assert len(audit(engine, "operator.role_changed")) == 2
    assert [r.actor for r in audit(engine, "operator.change_refused")] == ["install", "ken", "hana"]


# ---------------------------------------------------------------------------------------- legal holds

@pytest.fixture
def user_with_items(team):
    user, other_user = uuid.uuid4(), uuid.uuid4()
    with team.begin() as conn:
        job = add_job(conn, user)
        items = [add_item(conn, job, user, kind) for kind in ("inst", "vocal", "master")]
        gone = add_item(conn, add_job(conn, user), user, "inst", deleted=True)
        other = add_item(conn, add_job(conn, other_user), other_user, "inst")
    return user, job, items, gone, other


def test_support_may_not_request_a_legal_hold(team, user_with_items):
    user = user_with_items[0]
    with pytest.raises(PermissionDenied) as refused:
        access.request_approval(team, "legal_hold", {"user_id": str(user), "hold": True}, "court order",
                                actor="aki", now=T0)
    assert str(refused.value) == "aki (support) may not request a legal hold change: needs admin"
    with team.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM approval_requests")).scalar_one() == 0
    [entry] = audit(team, "approval.request_refused")
    assert entry.actor == "aki" and entry.details["refusal"] == "PermissionDenied"


def test_legal_hold_takes_effect_only_when_a_second_operator_approves(team, user_with_items):
    user, job, items, gone, other = user_with_items
    request = access.request_approval(team, "legal_hold", {"user_id": str(user).upper(), "hold": True},
                                      "litigation 2026-17", actor="hana", now=T0)
    assert request.status == "pending" and request.target == {"user_id": str(user), "hold": True}
    assert request.expires_at - request.requested_at == timedelta(hours=24)

    with pytest.raises(PermissionDenied, match="hana requested approval .* a second, different operator must"):
        access.approve(team, request.id, approver="hana", now=T0 + timedelta(minutes=5))
    with pytest.raises(PermissionDenied, match=r"aki \(support\) may not approve or reject a legal hold change"):
        access.approve(team, request.id, approver="aki", now=T0 + timedelta(minutes=5))
    assert not any(held(team).values()) and status_of(team, request.id) == ("pending", None)

    decision = access.approve(team, request.id, approver="ken", now=T0 + timedelta(minutes=10))
    assert decision.request.status == "approved" and decision.request.decided_by == "ken"
    assert decision.request.decided_at == T0 + timedelta(minutes=10)
    assert decision.legal_hold == access.LegalHoldChange({"user_id": str(user), "hold": True}, 3, 3, 3)
    assert held(team) == {items[0]: True, items[1]: True, items[2]: True, gone: False, other: False}

    [hold_entry] = audit(team, "legal_hold.set")
    assert (hold_entry.actor, hold_entry.target_type, hold_entry.target_id) == ("ken", "user", str(user))
    assert hold_entry.details["live_items"] == 3 and hold_entry.details["requested_by"] == "hana"
    assert [e.actor for e in audit(team, "approval.requested")] == ["hana"]
    assert [e.actor for e in audit(team, "approval.approved")] == ["ken"]
    assert [e.actor for e in audit(team, "approval.decision_refused")] == ["hana", "aki"]
    with team.connect() as conn:
        assert access.under_legal_hold(conn, user_id=user) and not access.under_legal_hold(conn, job_id=uuid.uuid4())

    # A job with no live items left: approved and audited, nothing to flip.
    with team.connect() as conn:
        emptied_job = conn.execute(text("SELECT job_id FROM vault_items WHERE id = :id"), {"id": gone}).scalar_one()
    empty = access.request_approval(team, "legal_hold", {"job_id": str(emptied_job), "hold": True}, "case",
                                    actor="jun", now=T0)
    assert access.approve(team, empty.id, approver="hana", now=T0).legal_hold.live_items == 0

    # The database refuses self-approval too, whatever code writes the row.
    with pytest.raises(exc.IntegrityError, match="approval_requests_four_eyes"), team.begin() as conn:
        conn.execute(text("UPDATE approval_requests SET decided_by = requested_by WHERE id = :id"),
                     {"id": request.id})


def test_releasing_one_hold_keeps_items_under_another(team, user_with_items):
    user, job, items, gone, other = user_with_items
    with team.begin() as conn:
        second_job = add_job(conn, user)
        second_item = add_item(conn, second_job, user, "vocal")

    def decide(target, minutes):
        request = access.request_approval(team, "legal_hold", target, "case", actor="hana",
                                          now=T0 + timedelta(minutes=minutes))
        return access.approve(team, request.id, approver="jun", now=T0 + timedelta(minutes=minutes + 1)).legal_hold

    decide({"job_id": str(job), "hold": True}, 0)
    decide({"user_id": str(user), "hold": True}, 10)
    released = decide({"job_id": str(job), "hold": False}, 20)
    assert (released.live_items, released.changed, released.held) == (3, 0, 3)  # the user's hold still covers them
    released = decide({"user_id": str(user), "hold": False}, 30)
    assert (released.live_items, released.changed, released.held) == (4, 4, 0)
    assert not any(held(team).values())
    decide({"job_id": str(second_job), "hold": True}, 40)
    released = decide({"user_id": str(user), "hold": False}, 50)
    assert held(team)[second_item] and not held(team)[items[0]]
    with team.connect() as conn:
        assert access.holds_in_force(conn) == [{"job_id": str(second_job)}]
    assert len(audit(team, "legal_hold.released")) == 3


@pytest.mark.parametrize("target, message", [
    ({"user_id": "not-a-uuid", "hold": True}, "is not a UUID"),
    ({"user_id": str(uuid.UUID(int=7)), "hold": True}, "there is no user"),
    ({"job_id": str(uuid.UUID(int=7)), "hold": True}, "there is no job"),
    ({"user_id": str(uuid.UUID(int=7))}, "with \"hold\": true or false"),
    ({"user_id": str(uuid.UUID(int=7)), "job_id": str(uuid.UUID(int=8)), "hold": True}, "legal_hold target is"),
])
def test_legal_hold_targets_are_validated(team, target, message):
    with pytest.raises(InvalidTarget, match=message):
        access.request_approval(team, "legal_hold", target, "case", actor="hana", now=T0)


def test_expired_approval_is_refused_and_marked_expired(team, user_with_items):
    user = user_with_items[0]
    request = access.request_approval(team, "legal_hold", {"user_id": str(user), "hold": True}, "case",
                                      actor="hana", now=T0)
    with pytest.raises(ApprovalExpired, match="expired at .* it is now marked expired"):
        access.approve(team, request.id, approver="ken", now=T0 + timedelta(hours=25))
    assert status_of(team, request.id) == ("expired", None)
    assert not any(held(team).values())
    assert [e.actor for e in audit(team, "approval.expired")] == ["ken"]
    with pytest.raises(ApprovalExpired, match="ask for a new one"):
        access.reject(team, request.id, approver="jun", now=T0 + timedelta(hours=26))

    # Just inside the 24 h it still works; a sweep marks the ones nobody looked at.
    late = access.request_approval(team, "legal_hold", {"user_id": str(user), "hold": True}, "case",
                                   actor="hana", now=T0)
    access.approve(team, late.id, approver="ken", now=T0 + timedelta(hours=23, minutes=59))
    forgotten = access.request_approval(team, "legal_hold", {"user_id": str(user), "hold": False}, "case",
                                        actor="hana", now=T0)
    assert access.expire_stale_requests(team, now=T0 + timedelta(hours=23)) == []
    assert access.expire_stale_requests(team, now=T0 + timedelta(hours=24)) == [forgotten.id]
    assert status_of(team, forgotten.id) == ("expired", None)


def test_a_decided_request_cannot_be_decided_again(team, user_with_items):
    user = user_with_items[0]
    request = access.request_approval(team, "legal_hold", {"user_id": str(user), "hold": True}, "case",
                                      actor="hana", now=T0)
    access.reject(team, request.id, approver="ken", now=T0 + timedelta(minutes=1), note="no court order attached")
    with pytest.raises(ApprovalAlreadyDecided, match="already rejected by ken"):
        access.approve(team, request.id, approver="jun", now=T0 + timedelta(minutes=2))
    assert status_of(team, request.id) == ("rejected", "ken") and not any(held(team).values())
    assert audit(team, "approval.rejected")[0].details["note"] == "no court order attached"


def test_racing_approvers_cannot_both_decide(team, user_with_items):
    user = user_with_items[0]
    request = access.request_approval(team, "legal_hold", {"user_id": str(user), "hold": True}, "case",
                                      actor="hana", now=T0)
    outcome = {}

    def second_approver():
        try:
            outcome["decision"] = access.approve(team, request.id, approver="jun", now=T0 + timedelta(minutes=2))
        except Exception as error:  # noqa: BLE001 - reported to the test thread
            outcome["error"] = error

    with team.connect() as first:
        access.approve(first, request.id, approver="ken", now=T0 + timedelta(minutes=1))  # row locked, not committed
        racer = threading.Thread(target=second_approver)
        racer.start()
        racer.join(timeout=1.0)
        assert racer.is_alive(), "the second approver must wait for the first one's lock"
        first.commit()
    racer.join(timeout=30)
    assert isinstance(outcome.get("error"), ApprovalAlreadyDecided), outcome
    assert status_of(team, request.id) == ("approved", "ken")


def test_unknown_actors_are_refused_everywhere(team, user_with_items):
    user = user_with_items[0]
    with pytest.raises(PermissionDenied, match="'mallory' is not a registered operator"):
        access.request_approval(team, "legal_hold", {"user_id": str(user), "hold": True}, "x", actor="mallory",
                                now=T0)
    request = access.request_approval(team, "legal_hold", {"user_id": str(user), "hold": True}, "x", actor="hana",
                                      now=T0)
    with pytest.raises(PermissionDenied, match="'mallory' is not a registered operator"):
        access.approve(team, request.id, approver="mallory", now=T0)
    with pytest.raises(PermissionDenied, match=r"rio \(read_only\) may not approve"):
        access.approve(team, request.id, approver="rio", now=T0)
    with pytest.raises(PermissionDenied, match="'mallory' is not a registered operator"):
        access.add_operator(team, "mallory", "admin", by="mallory", now=T0)
    assert status_of(team, request.id) == ("pending", None)


def test_other_kinds_are_decided_here_and_acted_on_elsewhere(team):
    with pytest.raises(PermissionDenied, match=r"aki \(support\) may not request a full model rollout"):
        access.request_approval(team, "rollout_full", {"model_id": 3}, "canary clean", actor="aki", now=T0)
    request = access.request_approval(team, "rollout_full", {"model_id": 3}, "canary clean", actor="ken", now=T0)
    with team.connect() as conn, pytest.raises(ApprovalStateError, match="still pending"):
        access.require_approved(conn, request.id, "rollout_full", now=T0)
    access.approve(team, request.id, approver="hana", now=T0 + timedelta(hours=1))
    with team.connect() as conn:
        assert access.require_approved(conn, request.id, "rollout_full", now=T0 + timedelta(hours=2)).target == {
            "model_id": 3}
        with pytest.raises(InvalidTarget, match="is for rollout_full, not legal_hold"):
            access.require_approved(conn, request.id, "legal_hold", now=T0)
    with pytest.raises(InvalidTarget, match="unknown approval kind"):
        access.request_approval(team, "delete_everything", {"x": 1}, "why not", actor="hana", now=T0)


def test_inside_the_callers_transaction_nothing_is_kept_without_a_commit(team, user_with_items):
    user = user_with_items[0]
    with team.connect() as conn:
        request = access.request_approval(conn, "legal_hold", {"user_id": str(user), "hold": True}, "x",
                                          actor="hana", now=T0)
        conn.rollback()
    with team.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM approval_requests")).scalar_one() == 0
    with team.begin() as conn:
        request = access.request_approval(conn, "legal_hold", {"user_id": str(user), "hold": True}, "x",
                                          actor="hana", now=T0)
    assert status_of(team, request.id) == ("pending", None)


# ------------------------------------------------------------------------------- original audio access

@pytest.fixture
def signing_key_env(monkeypatch):
    monkeypatch.setenv(access.ENV_SIGNING_KEY, "k" * 40)


def approved_access(engine, store, *, now=T0, kind="vocal", data=b"RIFF original vocal take"):
    """An original_access request by support (aki) on a stored raw item, approved by ops (ken)."""
    user = uuid.uuid4()
    with engine.begin() as conn:
        item = add_item(conn, add_job(conn, user), user, kind, store=store, data=data)
    request = access.request_approval(engine, "original_access", {"vault_item_id": item},
                                      "user ticket 4711: clipping at 1:02", actor="aki", now=now)
    access.approve(engine, request.id, approver="ken", now=now + timedelta(minutes=1))
    return request, item


def test_local_signed_url_opens_for_120_seconds_and_is_audited(team, local_store, signing_key_env):
    request, item = approved_access(team, local_store)
    granted_at = T0 + timedelta(minutes=2)
    signed = access.grant_original_access(team, local_store, request.id, actor="aki", now=granted_at)
    assert signed.url.startswith("mixai-local://vault/") and signed.expires_at == granted_at + timedelta(seconds=120)

    assert access.open_signed_url(local_store, signed.url, now=granted_at + timedelta(seconds=119)) == \
        b"RIFF original vocal take"
    with pytest.raises(SignedURLRefused, match="signed URL expired at"):
        access.open_signed_url(local_store, signed.url, now=granted_at + timedelta(seconds=121))

    [entry] = audit(team, "original.accessed")
    assert (entry.actor, entry.target_type, entry.target_id) == ("aki", "vault_item", str(item))
    assert entry.details["approval_request"] == request.id and entry.details["approved_by"] == "ken"
    assert entry.details["url_expires_at"] == signed.expires_at.isoformat()


def test_tampered_local_urls_are_refused(team, local_store, signing_key_env, monkeypatch):
    request, item = approved_access(team, local_store)
    other_key = f"vault/{uuid.uuid4()}/inst.wav"
    local_store.put_bytes(other_key, b"someone else's audio")
    signed = access.grant_original_access(team, local_store, request.id, actor="aki", now=T0 + timedelta(minutes=2))
    url_key = signed.url.removeprefix("mixai-local://").partition("?")[0]
    expires = int(signed.expires_at.timestamp())
    tampered = [
        signed.url.replace(url_key, other_key),
        signed.url.replace(f"expires={expires}", f"expires={expires + 3600}"),
        signed.url[:-1] + ("0" if signed.url[-1] != "0" else "1"),
        signed.url + "&sig=00",
        signed.url.split("&sig=")[0],
        signed.url.replace("mixai-local://", "file://"),
    ]
    for url in tampered:
        with pytest.raises(SignedURLRefused):
            access.open_signed_url(local_store, url, now=T0 + timedelta(minutes=2))
    # A key of another installation does not open it either.
    monkeypatch.setenv(access.ENV_SIGNING_KEY, "z" * 40)
    with pytest.raises(SignedURLRefused, match="signature does not match"):
        access.open_signed_url(local_store, signed.url, now=T0 + timedelta(minutes=2))


def test_s3_presigned_url_is_fetched_over_http_before_expiry(team, s3_store):
    now = datetime.now(timezone.utc)  # the URL is fetched from a real server: sign it as of the real time
    request, item = approved_access(team, s3_store, now=now - timedelta(minutes=5), kind="inst",
                                    data=b"ID3 original inst")
    signed = access.grant_original_access(team, s3_store, request.id, actor="aki", now=now)
    assert "X-Amz-Expires=120" in signed.url
    assert signed.expires_at == now.replace(microsecond=0) + timedelta(seconds=120)
    with urllib.request.urlopen(signed.url, timeout=30) as response:
        assert response.read() == b"ID3 original inst"
    assert access.open_signed_url(s3_store, signed.url, now=now + timedelta(seconds=119)) == b"ID3 original inst"

    # moto_server serves presigned URLs whatever their age or signature, so expiry and tampering are checked
    # with our own verification (real S3 and MinIO refuse them on their side as well).
    with pytest.raises(SignedURLRefused, match="signed URL expired"):
        access.verify_signed_url(s3_store, signed.url, now=now + timedelta(seconds=121))
    with pytest.raises(SignedURLRefused, match="signed URL expired"):
        access.open_signed_url(s3_store, signed.url, now=now + timedelta(seconds=121))
    for url in (signed.url.replace("X-Amz-Expires=120", "X-Amz-Expires=119"),
                signed.url.replace("X-Amz-Signature=", "X-Amz-Signature=0"),
                signed.url.replace("/inst.wav", "/vocal.wav")):
        assert url != signed.url
        with pytest.raises(SignedURLRefused):
            access.verify_signed_url(s3_store, url, now=now)
    assert len(audit(team, "original.accessed")) == 1


def test_original_access_needs_an_approved_request_by_its_requester(team, local_store, signing_key_env):
    user = uuid.uuid4()
    with team.begin() as conn:
        item = add_item(conn, add_job(conn, user), user, "inst", store=local_store, data=b"x")
    request = access.request_approval(team, "original_access", {"vault_item_id": item}, "ticket", actor="aki",
                                      now=T0)
    with pytest.raises(ApprovalStateError, match="still pending"):
        access.grant_original_access(team, local_store, request.id, actor="aki", now=T0)
    with pytest.raises(PermissionDenied, match="aki requested approval .* may not approve it"):
        access.approve(team, request.id, approver="aki", now=T0)
    access.approve(team, request.id, approver="jun", now=T0 + timedelta(minutes=1))
    with pytest.raises(PermissionDenied, match="only its requester aki may open"):
        access.grant_original_access(team, local_store, request.id, actor="ken", now=T0 + timedelta(minutes=2))
    with pytest.raises(ValueError, match="ttl_s must be 1 to 120"):
        access.grant_original_access(team, local_store, request.id, actor="aki", now=T0, ttl_s=600)
    with pytest.raises(ApprovalExpired, match="its window ended"):
        access.grant_original_access(team, local_store, request.id, actor="aki", now=T0 + timedelta(hours=24))

    # Demoted since the request: no more access.
    access.add_operator(team, "aki", "read_only", by="hana", now=T0)
    with pytest.raises(PermissionDenied, match=r"aki \(read_only\) may not request access to original audio"):
        access.grant_original_access(team, local_store, request.id, actor="aki", now=T0 + timedelta(minutes=2))
    assert audit(team, "original.accessed") == []
    assert len(audit(team, "original.access_refused")) == 4  # the bad ttl_s is a programming error


def test_original_access_only_to_live_raw_audio(team, local_store, signing_key_env):
    user = uuid.uuid4()
    with team.begin() as conn:
        job = add_job(conn, user)
        preview = add_item(conn, job, user, "preview", store=local_store, data=b"p")
        deleted = add_item(conn, add_job(conn, user), user, "inst", deleted=True)
    for target, message in (({"vault_item_id": preview}, "is a preview, not original audio"),
                            ({"vault_item_id": deleted}, "was deleted at"),
                            ({"vault_item_id": 10**9}, "there is no vault item"),
                            ({"vault_item_id": "1"}, "must be an integer"),
                            ({"path": "vault/x"}, "original_access target is")):
        with pytest.raises(InvalidTarget, match=message):
            access.request_approval(team, "original_access", target, "ticket", actor="aki", now=T0)

    # Deleted (e.g. purged) between approval and access: refused.
    request, item = approved_access(team, local_store)
    with team.begin() as conn:
        conn.execute(text("UPDATE vault_items SET deleted_at = :at WHERE id = :id"), {"at": T0, "id": item})
    with pytest.raises(InvalidTarget, match="was deleted at"):
        access.grant_original_access(team, local_store, request.id, actor="aki", now=T0 + timedelta(minutes=2))


def test_local_signing_key_is_created_once_or_taken_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXAI_HOME", str(tmp_path))
    monkeypatch.delenv(access.ENV_SIGNING_KEY, raising=False)
    first = access.signing_key()
    assert first == access.signing_key() and len(first) == 64
    key_file = tmp_path / access.SIGNING_KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv(access.ENV_SIGNING_KEY, "short")
    with pytest.raises(ValueError, match="MIXAI_SIGNING_KEY is 5 bytes long: use at least 32"):
        access.signing_key()
