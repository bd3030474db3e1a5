"""Governance runs: consent-change events applied, withdrawn users' data deleted, and the operator actions
(consent, legal hold and original-access approvals), each checking the actor's role and audited."""

import dagster as dg
from pydantic import Field

from mixai_pipeline.resources import Clock, Database, ObjectStoreResource

CONSENT_PREFIX = "consent/"


class ConsentChangesConfig(dg.Config):
    keys: list[str] = Field(description="consent/<user_id>/<timestamp>.json objects to apply")


@dg.op(description="Apply the app's consent-change events, oldest choice first; withdrawals take effect at once.")
def apply_consent_changes(context: dg.OpExecutionContext, config: ConsentChangesConfig, database: Database,
                          object_store: ObjectStoreResource, clock: Clock) -> dg.Output[dict]:
    from mixai_pipeline.lib.governance import consent

    store, now = object_store.get_store(), clock.now()
    events, refused = [], {}
    for key in config.keys:
        try:
            events.append(consent.parse_consent_event(key, store.get_bytes(key, max_bytes=64 * 1024)))
        except Exception as exc:  # a hostile or broken event: reported, left where it is, the others go on
            refused[key] = f"{type(exc).__name__}: {exc}"
            context.log.warning(f"consent event {key!r} refused: {refused[key]}")
    outcomes: dict[str, str] = {}
    for event in consent.events_in_order(events):
        try:
            with database.get_engine().begin() as conn:
                outcomes[event.key] = consent.apply_consent_event(conn, event, actor="dagster:consent_changes",
                                                                  now=now)
        except consent.InvalidConsentEvent as exc:
            refused[event.key] = str(exc)
            context.log.warning(str(exc))
    counts = {status: list(outcomes.values()).count(status) for status in sorted(set(outcomes.values()))}
    return dg.Output({"outcomes": outcomes, "refused": refused}, metadata={
        "events": len(config.keys), **{f"events_{status}": n for status, n in counts.items()},
        "refused": len(refused), "refused_examples": dg.MetadataValue.json(dict(list(refused.items())[:20]))})


@dg.job(description="Consent-change events from the app (consent_changes_sensor).")
def consent_changes_job():
    apply_consent_changes()


class UserDataPurgeConfig(dg.Config):
    user_ids: list[str] = Field(default=[], description="users to purge; empty: every user with a deletion due")


@dg.op(description="Delete withdrawn users' previews, features, labels and raw audio (legal holds kept and "
                   "reported); records the time from withdrawal to completion.")
def purge_withdrawn_users(context: dg.OpExecutionContext, config: UserDataPurgeConfig, database: Database,
                          object_store: ObjectStoreResource, clock: Clock) -> dg.Output[list[dict]]:
    from mixai_pipeline.lib.governance import purge
    from mixai_pipeline.lib.training import incremental

    engine, store, now = database.get_engine(), object_store.get_store(), clock.now()
    if config.user_ids:
        users = config.user_ids
    else:
        with engine.connect() as conn:
            users = purge.users_due_for_purge(conn)
    reports = []
    for user in users:
        report = purge.purge_user_data(engine, store, user, now=now, actor="dagster:user_data_purge")
        context.log.info(f"user {user}: {report.status}, {report.items_deleted} objects, rows {report.rows_deleted}"
                         + (f", {len(report.held)} held by a legal hold" if report.held else ""))
        reports.append({"user_id": user, "status": report.status, "objects_deleted": report.items_deleted,
                        "bytes_freed": report.bytes_freed, "rows_deleted": report.rows_deleted,
                        "held": len(report.held), "errors": len(report.errors),
                        "withdrawal_to_deletion_s": {str(k): round(v, 1) for k, v in report.durations_s.items()}})
    with engine.connect() as conn:  # incremental models cannot unlearn the users' rows: reset them
        forgotten = incremental.forget_users(conn, store, users)
    if forgotten:
        context.log.info(f"incremental models reset (they had learned from these users): {', '.join(forgotten)}")
    durations = [d for r in reports for d in r["withdrawal_to_deletion_s"].values()]
    with engine.connect() as conn:
        overdue = purge.overdue_deletion_requests(conn, now=now)
    if overdue:
        context.log.error(f"{len(overdue)} deletion request(s) past their 24 h deadline")
    return dg.Output(reports, metadata={
        "users": len(reports), "objects_deleted": sum(r["objects_deleted"] for r in reports),
        "held": sum(r["held"] for r in reports), "errors": sum(r["errors"] for r in reports),
        "max_withdrawal_to_deletion_h": round(max(durations) / 3600, 2) if durations else 0.0,
        "overdue_requests": len(overdue), "incremental_models_reset": ", ".join(forgotten) or "none",
        "reports": dg.MetadataValue.json(reports[:50])})


@dg.job(description="Withdrawn users' data deleted within 24 h (deletion_requests_sensor, or by hand).")
def user_data_purge_job():
    purge_withdrawn_users()


retention_purge_job = dg.define_asset_job(
    "retention_purge_job", selection=dg.AssetSelection.assets("retention_purge"),
    description="One day's retention purge (retention_purge_schedule: yesterday's, at 03:30 Tokyo).")


class SetConsentConfig(dg.Config):
    user_id: str
    training: bool | None = Field(default=None, description="training consent (False: a withdrawal)")
    qa: bool | None = Field(default=None, description="QA listening consent")
    actor: str = Field(min_length=1, description="the operator (needs a role allowed consent changes)")
    reason: str = ""


@dg.op(description="An operator sets a user's consent (support, ops or admin); a training opt-out is a withdrawal.")
def set_consent(context: dg.OpExecutionContext, config: SetConsentConfig, database: Database,
                clock: Clock) -> dg.Output[dict]:
    from mixai_pipeline.lib.governance import access, consent

    with database.get_engine().begin() as conn:
        try:
            access.require_permission(conn, config.actor, "consent.change")
        except access.PermissionDenied as exc:
            raise dg.Failure(str(exc)) from exc
        outcome = consent.operator_change(conn, config.user_id, qa=config.qa, training=config.training,
                                          actor=config.actor, now=clock.now(), reason=config.reason or None)
    summary = {"user_id": config.user_id, "outcome": outcome}
    return dg.Output(summary, metadata=summary)


@dg.job(description="Operator: grant or withdraw a user's consent.")
def set_consent_job():
    set_consent()


class ApprovalRequestConfig(dg.Config):
    kind: str = Field(description="legal_hold | original_access")
    target: dict = Field(description='legal_hold: {"user_id" or "job_id", "hold": true|false}; '
                                     'original_access: {"vault_item_id": N}')
    reason: str = Field(min_length=1)
    actor: str = Field(min_length=1)


@dg.op(description="Request a legal-hold change (admin) or access to an original (4-eyes approval follows).")
def request_approval(config: ApprovalRequestConfig, database: Database, clock: Clock) -> dg.Output[dict]:
    from mixai_pipeline.lib.governance import access

    try:
        request = access.request_approval(database.get_engine(), config.kind, config.target, config.reason,
                                          actor=config.actor, now=clock.now())
    except access.GovernanceError as exc:
        raise dg.Failure(str(exc)) from exc
    return dg.Output({"request_id": request.id}, metadata={"request_id": request.id, "kind": config.kind,
                                                           "expires_at": request.expires_at.isoformat()})


@dg.job(description="Operator: request a legal-hold change or access to an original (needs a second operator).")
def request_approval_job():
    request_approval()


class ApprovalDecisionConfig(dg.Config):
    request_id: int
    approve: bool = Field(description="True approves, False rejects")
    actor: str = Field(min_length=1, description="the deciding operator (not the requester)")


@dg.op(description="Approve or reject a pending request (4-eyes: never the requester; expired ones refused).")
def decide_approval(config: ApprovalDecisionConfig, database: Database, clock: Clock) -> dg.Output[dict]:
    from mixai_pipeline.lib.governance import access

    decide = access.approve if config.approve else access.reject
    try:
        decision = decide(database.get_engine(), config.request_id, approver=config.actor, now=clock.now())
    except access.GovernanceError as exc:
        raise dg.Failure(str(exc)) from exc
    hold = decision.legal_hold
    summary = {"request_id": config.request_id, "status": decision.request.status,
               **({"items_changed": hold.changed, "items_held": hold.held} if hold else {})}
    return dg.Output(summary, metadata=summary)


@dg.job(description="Operator: approve or reject a pending legal-hold or original-access request.")
def decide_approval_job():
    decide_approval()

