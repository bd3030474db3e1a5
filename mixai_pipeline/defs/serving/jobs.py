"""Operator actions of the serving loop (seed 000 §18 ``setRollout``, ``getOnlineMetrics``): feature flags,
a model's rollout percentage, promotion, rollback, and its online metrics. Each is a job with typed config
(the ``mixai`` CLI runs the same jobs), checks the operator's role, writes ``audit_logs`` and sends its alert.
A manual move to 100 % or a promotion needs an approved ``rollout_full`` request (requester ≠ approver)."""

import dagster as dg
from pydantic import Field

from mixai_pipeline.resources import Alerts, Clock, Database, FeatureFlags


def _refusal(exc: Exception) -> dg.Failure:
    return dg.Failure(f"{type(exc).__name__}: {exc}")


class SetFlagConfig(dg.Config):
    key: str = Field(description="enable_cpu_ml, enable_hq_master, enable_align, enable_master_regression, "
                                 "enable_preset_recommendation or enable_align_confidence")
    enabled: bool
    rollout_percent: int = Field(default=100, ge=0, le=100, description="share of users it is on for")
    actor: str = Field(min_length=1, description="the operator (ops or admin)")
    reason: str = Field(min_length=1)


@dg.op(description="Turn a feature flag on (for a share of the users) or off; audited.")
def set_feature_flag(config: SetFlagConfig, feature_flags: FeatureFlags) -> dg.Output[dict]:
    from mixai_pipeline.lib.governance.access import GovernanceError
    from mixai_pipeline.lib.serving.flags import UnknownFlag

    try:
        flag = feature_flags.set(config.key, enabled=config.enabled, rollout_percent=config.rollout_percent,
                                 actor=config.actor, reason=config.reason)
    except (GovernanceError, UnknownFlag, ValueError) as exc:
        raise _refusal(exc) from exc
    state = {"key": flag.key, "enabled": flag.enabled, "rollout_percent": flag.rollout_percent}
    return dg.Output(state, metadata=state)


@dg.job(description="Operator: set a feature flag.")
def set_feature_flag_job():
    set_feature_flag()


class RolloutChangeConfig(dg.Config):
    model_id: int = Field(ge=1)
    action: str = Field(description="set | promote | rollback")
    percent: int = Field(default=0, ge=0, le=100, description="set: the new rollout percentage")
    approval_id: int | None = Field(default=None, description="an approved rollout_full request (100 %, promote)")
    actor: str = Field(min_length=1, description="the operator (ops or admin)")
    reason: str = Field(min_length=1)


@dg.op(description="Set a model's rollout percentage, promote it, or roll it back; audited, alerted.")
def change_rollout(context: dg.OpExecutionContext, config: RolloutChangeConfig, database: Database, clock: Clock,
                   alerts: Alerts) -> dg.Output[dict]:
    from mixai_pipeline.lib.governance.access import GovernanceError, write_refusal
    from mixai_pipeline.lib.serving import rollout

    if config.action not in ("set", "promote", "rollback"):
        raise dg.Failure(f"unknown action {config.action!r} (set, promote or rollback)")
    now = clock.now()
    engine = database.get_engine()
    try:
        with engine.begin() as conn:
            if config.action == "set":
                decision = rollout.set_rollout(conn, config.model_id, config.percent, actor=config.actor, now=now,
                                               reason=config.reason, approval_id=config.approval_id)
            elif config.action == "promote":
                decision = rollout.promote(conn, config.model_id, actor=config.actor, now=now, reason=config.reason,
                                           approval_id=config.approval_id)
            else:
                decision = rollout.rollback(conn, config.model_id, actor=config.actor, now=now, reason=config.reason)
    except (GovernanceError, rollout.RolloutError) as exc:
        with engine.begin() as conn:  # the refusal rolled the change back: its audit entry has its own transaction
            write_refusal(conn, exc, actor=config.actor, action="model.rollout_change_refused",
                          target_type="model", target_id=str(config.model_id),
                          context={"action": config.action, "percent": config.percent,
                                   "approval_id": config.approval_id, "reason": config.reason})
        raise _refusal(exc) from exc
    for alert in rollout.alerts_for(decision):
        alerts.send(alert)
    context.log.info(decision.reason)
    summary = {"model_id": decision.model_id, "task": decision.task, "version": decision.version,
               "action": decision.action, "from_percent": decision.from_percent, "to_percent": decision.to_percent,
               "restored_model_id": decision.restored_model_id or 0}
    return dg.Output(summary, metadata=summary)


@dg.job(description="Operator: a model's rollout — set the percentage, promote, or roll back.")
def change_rollout_job():
    change_rollout()


class OnlineMetricsConfig(dg.Config):
    model_id: int = Field(ge=1)
    window: str = Field(default="1d", description="1h, 1d, 7d or 30d")


@dg.op(description="A model's online metrics over a window, ending now (getOnlineMetrics).")
def online_metrics(config: OnlineMetricsConfig, database: Database, clock: Clock) -> dg.Output[dict]:
    from mixai_pipeline.lib.serving.online_metrics import WINDOWS, model_row, model_window

    if config.window not in WINDOWS:
        raise dg.Failure(f"unknown window {config.window!r} (expected one of {', '.join(WINDOWS)})")
    now = clock.now()
    with database.get_engine().connect() as conn:
        model = model_row(conn, config.model_id)
        if model is None:
            raise dg.Failure(f"no model with id {config.model_id} in the registry")
        metrics = model_window(conn, model, now - WINDOWS[config.window], now, window=config.window).as_dict()
    metrics["status"], metrics["rollout_percent"] = model["status"], model["rollout_percent"]
    return dg.Output(metrics, metadata={k: dg.MetadataValue.json(v) if isinstance(v, dict) else v
                                        for k, v in metrics.items() if v is not None})


@dg.job(description="Operator: a model's online metrics for a window.")
def online_metrics_job():
    online_metrics()
