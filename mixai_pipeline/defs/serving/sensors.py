"""The rollout controller: every evaluation judges each model in rollout (and each active model) against
its SLOs and carries out the decision at once — a step, an activation, or a rollback with an alert."""

import os

import dagster as dg

from mixai_pipeline.resources import Alerts, Clock, Database, RolloutPolicyResource

ENV_ROLLOUT_INTERVAL_S = "MIXAI_ROLLOUT_INTERVAL_S"


def evaluate_and_apply(database: Database, rollout_policy: RolloutPolicyResource, alerts: Alerts, clock: Clock,
                       log=None) -> list:
    """One evaluation: decisions from the metrics, each change applied in its own transaction, alerts sent
    after it committed. Returns the decisions (holds included)."""
    from mixai_pipeline.lib.serving import rollout

    engine, now = database.get_engine(), clock.now()
    with engine.connect() as conn:
        decisions = rollout.evaluate(conn, rollout_policy.policy(), now)
    done = []
    for decision in decisions:
        if decision.changes:
            with engine.begin() as conn:
                decision = rollout.apply(conn, decision, now=now)
            for alert in rollout.alerts_for(decision):
                alerts.send(alert)
        if log:
            log(f"{decision.task}/{decision.version}: {decision.action} {decision.from_percent} → "
                f"{decision.to_percent} %: {decision.reason}")
        done.append(decision)
    return done


@dg.sensor(minimum_interval_seconds=int(os.environ.get(ENV_ROLLOUT_INTERVAL_S, "300")),
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Rollout controller: 5 → 25 → 100 % → active while SLOs hold (mean latency, error rate, "
                       "output PSI, outcome test), rollback within one evaluation on any breach. Interval: env "
                       f"{ENV_ROLLOUT_INTERVAL_S} (s); limits: the rollout_policy resource.")
def rollout_controller_sensor(context: dg.SensorEvaluationContext, database: Database,
                              rollout_policy: RolloutPolicyResource, alerts: Alerts, clock: Clock):
    decisions = evaluate_and_apply(database, rollout_policy, alerts, clock, log=context.log.info)
    alerts.get_sender().flush(timeout_s=5.0)
    context.update_cursor(clock.now().isoformat())
    if not decisions:
        return dg.SkipReason("no model in rollout or active")
    return dg.SkipReason("; ".join(f"{d.task}/{d.version} {d.action}"
                                   + (f" {d.from_percent}→{d.to_percent} %" if d.changes else f": {d.reason}")
                                   for d in decisions))
