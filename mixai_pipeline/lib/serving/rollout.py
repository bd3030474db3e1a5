"""The rollout of registered models: 5 → 25 → 100 % → active while they hold their SLOs, and back at once
when they do not (seed 000 §11, §12, §16.3).

States (``model_registry.status`` and ``rollout_percent``): a model is registered ``candidate`` at 0 %. The
controller (``evaluate`` then ``apply``, run by a Dagster sensor) walks one model per task:

- **start**: with no model of the task in rollout, the newest candidate never rolled out starts at 5 %;
- **step**: after a stage (the time since ``rollout_updated_at``) with at least ``min_n`` calls and
  ``min_stage`` of time in which every SLO held, 5 → 25 → 100;
- **activate**: after a clean stage at 100 % the candidate becomes ``active`` and the previous active model
  ``retired``;
- **rollback**: any breach during a stage — the candidate goes to 0 % and ``rolled_back``, so its users are
  served by the active model (or the rules) again from the next job on. An ``active`` model that breaches is
  rolled back too, and the model active before it (the retired one most recently activated) is restored.

SLOs (``RolloutPolicy``, every limit configurable): mean latency < 50 ms, error rate < 1 %, output PSI
< 0.2 on every output, and no significant outcome regression against the control (``stats.two_proportion_test``
on the re-process rate, one-sided, ``alpha`` = 0.01). Every evaluation is another look at accumulating data,
and repeated looks inflate the false-alarm rate of a fixed-level test; hence the strict default (a false alarm
costs a retried rollout, a missed regression costs users). A model that fails to load is a breach at the
first such call.
Latency and error rate are judged from ``breach_min_n`` calls on (a broken model is stopped early), drift only
on ``min_n`` calls (PSI is noise on fewer), the outcome test whenever it has enough events to give a p-value.
Promotion needs everything: ``min_n`` calls, ``min_stage`` of time and an output reference to measure drift
against; a model without one holds (it is never promoted blind).

Operators (``set_rollout``, ``promote``, ``rollback``) use the same transitions, with the ``rollout.change``
permission; a manual move to 100 % or a manual promotion needs an approved ``rollout_full`` approval for that
model (requested and approved by two different operators). Every transition writes ``audit_logs``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Connection, text

from mixai_pipeline.lib.serving.alerts import Alert
from mixai_pipeline.lib.serving.online_metrics import WindowMetrics, model_window, registry_rows
from mixai_pipeline.lib.storage.database import write_audit
from mixai_pipeline.lib.training.dataset import TASKS

CONTROLLER = "system:rollout-controller"


class RolloutError(ValueError):
    """An operator's rollout change that cannot be made (with the reason)."""


@dataclass(frozen=True)
class RolloutPolicy:
    steps: tuple[int, ...] = (5, 25, 100)
    min_n: int = 200
    min_stage: timedelta = timedelta(hours=1)
    breach_min_n: int = 20
    max_latency_ms: float = 50.0
    max_err_rate: float = 0.01
    max_psi: float = 0.2
    alpha: float = 0.01
    active_window: timedelta = timedelta(hours=1)   # an active model is judged on its calls of the last hour

    def __post_init__(self):
        if not self.steps or list(self.steps) != sorted(set(self.steps)) or self.steps[-1] != 100 or self.steps[0] <= 0:
            raise ValueError(f"rollout steps must rise strictly from above 0 to 100, got {self.steps}")
        if self.min_n < 1 or self.breach_min_n < 1:
            raise ValueError("min_n and breach_min_n must be at least 1")


@dataclass(frozen=True)
class Decision:
    task: str
    model_id: int
    version: str
    action: str                       # start | step | activate | rollback | hold
    from_percent: int
    to_percent: int
    reason: str
    breaches: tuple[str, ...] = ()
    metrics: dict | None = None       # the stage's WindowMetrics.as_dict()
    restored_model_id: int | None = None
    restored_version: str | None = None

    @property
    def changes(self) -> bool:
        return self.action != "hold"


def breaches(m: WindowMetrics, policy: RolloutPolicy) -> list[str]:
    """The SLOs the window breaks, in words (empty: none)."""
    found = []
    if m.load_failures:
        found.append(f"the model failed to load ({m.load_failures} of {m.n} calls)")
    if m.n >= policy.breach_min_n:
        if m.latency_ms is not None and m.latency_ms >= policy.max_latency_ms:
            found.append(f"mean latency {m.latency_ms:.1f} ms ≥ {policy.max_latency_ms:g} ms over {m.n} calls")
        if m.err_rate is not None and m.err_rate >= policy.max_err_rate:
            found.append(f"error rate {m.err_rate:.1%} ≥ {policy.max_err_rate:.0%} over {m.n} calls")
    if m.n >= policy.min_n and m.drift:
        drifted = {k: v for k, v in m.drift.items() if v >= policy.max_psi}
        if drifted:
            found.append("output drift: PSI " + ", ".join(f"{k} {v:.2f}" for k, v in drifted.items())
                         + f" ≥ {policy.max_psi:g}")
    outcome = m.outcomes or {}
    if outcome.get("p_value") is not None and outcome["p_value"] < policy.alpha:
        found.append(f"re-process rate {outcome['treatment_rate']:.1%} (n={outcome['treatment_n']}) vs control "
                     f"{outcome['control_rate']:.1%} (n={outcome['control_n']}), one-sided p={outcome['p_value']:.4f} "
                     f"< {policy.alpha:g}")
    return found


def _not_ready(m: WindowMetrics, model: dict, policy: RolloutPolicy, now: datetime) -> str | None:
    waited = now - model["rollout_updated_at"]
    if m.n < policy.min_n:
        return f"{m.n} of {policy.min_n} calls needed at {model['rollout_percent']} %"
    if waited < policy.min_stage:
        return f"stage open {_duration(waited)} of {_duration(policy.min_stage)}"
    if not model.get("output_reference"):
        return "no output reference registered: drift cannot be judged, so the model is not promoted"
    return None


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


# ------------------------------------------------------------------------------------------- reading

def active_model(conn: Connection, task: str) -> dict | None:
    rows = registry_rows(conn, "name = :task AND status = 'active'", {"task": task})
    return rows[0] if rows else None


def model_in_rollout(conn: Connection, task: str) -> dict | None:
    rows = registry_rows(conn, "name = :task AND status = 'candidate' AND rollout_percent > 0", {"task": task})
    return rows[0] if rows else None


def next_candidate(conn: Connection, task: str) -> dict | None:
    """The newest candidate of the task that was never rolled out."""
    rows = registry_rows(conn, "name = :task AND status = 'candidate' AND rollout_percent = 0 "
                               "AND rollout_updated_at IS NULL ORDER BY created_at DESC, id DESC LIMIT 1",
                         {"task": task})
    return rows[0] if rows else None


# ------------------------------------------------------------------------------------------ deciding

def evaluate(conn: Connection, policy: RolloutPolicy, now: datetime) -> list[Decision]:
    """One controller evaluation: a decision per model in play (read only; ``apply`` carries it out)."""
    decisions = []
    for task in TASKS:
        candidate = model_in_rollout(conn, task)
        if candidate is not None:
            decisions.append(_judge_candidate(conn, candidate, policy, now))
        else:
            fresh = next_candidate(conn, task)
            if fresh is not None:
                decisions.append(Decision(task, fresh["id"], fresh["version"], "start", 0, policy.steps[0],
                                          f"newly registered: starts at {policy.steps[0]} %"))
        active = active_model(conn, task)
        if active is not None:
            judged = _judge_active(conn, active, policy, now)
            if judged is not None:
                decisions.append(judged)
    return decisions


def _judge_candidate(conn: Connection, model: dict, policy: RolloutPolicy, now: datetime) -> Decision:
    percent = model["rollout_percent"]
    m = model_window(conn, model, model["rollout_updated_at"], now, window="stage", control_start=model["created_at"])
    base = Decision(model["name"], model["id"], model["version"], "hold", percent, percent, "", metrics=m.as_dict())
    found = breaches(m, policy)
    if found:
        return replace(base, action="rollback", to_percent=0, reason="SLO breach: " + "; ".join(found),
                       breaches=tuple(found))
    waiting = _not_ready(m, model, policy, now)
    if waiting:
        return replace(base, reason=waiting)
    if percent >= 100:
        return replace(base, action="activate", to_percent=100,
                       reason=f"SLOs held at 100 % over {m.n} calls: becomes the active model")
    step = next(s for s in policy.steps if s > percent)
    return replace(base, action="step", to_percent=step, reason=f"SLOs held at {percent} % over {m.n} calls")


def _judge_active(conn: Connection, model: dict, policy: RolloutPolicy, now: datetime) -> Decision | None:
    """A breach of the active model (over the last ``active_window``, from its activation on) rolls it back."""
    start = max(now - policy.active_window, model["activated_at"] or model["created_at"])
    m = model_window(conn, model, start, now, window="stage")
    found = breaches(m, policy)
    if not found:
        return None
    return Decision(model["name"], model["id"], model["version"], "rollback", model["rollout_percent"], 0,
                    "SLO breach of the active model: " + "; ".join(found), breaches=tuple(found), metrics=m.as_dict())


# ------------------------------------------------------------------------------------------ applying

def apply(conn: Connection, decision: Decision, *, now: datetime, actor: str = CONTROLLER) -> Decision:
    """Carry out a controller decision (in the caller's transaction); returns it with what was restored."""
    if decision.action == "hold":
        return decision
    details = {"reason": decision.reason, "breaches": list(decision.breaches), "metrics": decision.metrics}
    if decision.action in ("start", "step"):
        _move(conn, decision.model_id, decision.to_percent, now=now, actor=actor, **details)
        return decision
    if decision.action == "activate":
        _activate(conn, decision.model_id, now=now, actor=actor, **details)
        return decision
    if decision.action == "rollback":
        restored = _rollback(conn, decision.model_id, now=now, actor=actor, **details)
        return replace(decision, restored_model_id=restored and restored["id"],
                       restored_version=restored and restored["version"])
    raise ValueError(f"unknown rollout action {decision.action!r}")


def _locked(conn: Connection, model_id: int) -> dict:
    row = conn.execute(text("SELECT id, name, version, status, rollout_percent FROM model_registry WHERE id = :id "
                            "FOR UPDATE"), {"id": model_id}).mappings().first()
    if row is None:
        raise RolloutError(f"no model with id {model_id} in the registry")
    return dict(row)


def _move(conn: Connection, model_id: int, percent: int, *, now: datetime, actor: str, **details) -> dict:
    model = _locked(conn, model_id)
    if model["status"] not in ("candidate", "rolled_back"):
        raise RolloutError(f"model {model_id} ({model['name']}/{model['version']}) is {model['status']}: only a "
                           "candidate (or a rolled-back model, retried) can be rolled out")
    if percent > 0:
        other = model_in_rollout(conn, model["name"])
        if other is not None and other["id"] != model_id:
            raise RolloutError(f"{model['name']}: model {other['id']} ({other['version']}) is already rolled out to "
                               f"{other['rollout_percent']} %; one model per task at a time")
    conn.execute(text("UPDATE model_registry SET status = 'candidate', rollout_percent = :p, rollout_updated_at = :now "
                      "WHERE id = :id"), {"p": percent, "now": now, "id": model_id})
    write_audit(conn, actor=actor, action="model.rollout", target_type="model", target_id=str(model_id),
                details={"name": model["name"], "version": model["version"], "from": model["rollout_percent"],
                         "to": percent, "at": now.isoformat(), **details})
    return model


def _activate(conn: Connection, model_id: int, *, now: datetime, actor: str, **details) -> None:
    model = _locked(conn, model_id)
    if model["status"] not in ("candidate", "retired"):
        raise RolloutError(f"model {model_id} is {model['status']}: it cannot become active")
    previous = conn.execute(text("UPDATE model_registry SET status = 'retired', rollout_percent = 0 "
                                 "WHERE name = :task AND status = 'active' RETURNING id"),
                            {"task": model["name"]}).scalar()
    conn.execute(text("UPDATE model_registry SET status = 'active', rollout_percent = 100, rollout_updated_at = :now, "
                      "activated_at = :now WHERE id = :id"), {"now": now, "id": model_id})
    write_audit(conn, actor=actor, action="model.activated", target_type="model", target_id=str(model_id),
                details={"name": model["name"], "version": model["version"], "retired": previous,
                         "at": now.isoformat(), **details})


def _rollback(conn: Connection, model_id: int, *, now: datetime, actor: str, **details) -> dict | None:
    model = _locked(conn, model_id)
    if model["status"] not in ("candidate", "active"):
        raise RolloutError(f"model {model_id} is {model['status']}: nothing to roll back")
    conn.execute(text("UPDATE model_registry SET status = 'rolled_back', rollout_percent = 0, "
                      "rollout_updated_at = :now WHERE id = :id"), {"now": now, "id": model_id})
    restored = None
    if model["status"] == "active":
        rows = registry_rows(conn, "name = :task AND status = 'retired' AND activated_at IS NOT NULL "
                           "ORDER BY activated_at DESC LIMIT 1", {"task": model["name"]})
        if rows:
            restored = rows[0]
            conn.execute(text("UPDATE model_registry SET status = 'active', rollout_percent = 100, "
                              "rollout_updated_at = :now, activated_at = :now WHERE id = :id"),
                         {"now": now, "id": restored["id"]})
    write_audit(conn, actor=actor, action="model.rolled_back", target_type="model", target_id=str(model_id),
                details={"name": model["name"], "version": model["version"], "was": model["status"],
                         "from": model["rollout_percent"], "restored": restored and restored["id"],
                         "at": now.isoformat(), **details})
    return restored


# ---------------------------------------------------------------------------------------- operators

def _operator(conn: Connection, actor: str) -> None:
    from mixai_pipeline.lib.governance.access import require_permission

    require_permission(conn, actor, "rollout.change")


def _full_rollout_approved(conn: Connection, model_id: int, approval_id: int | None, now: datetime) -> int:
    from mixai_pipeline.lib.governance.access import require_approved

    if approval_id is None:
        raise RolloutError(f"a manual move of model {model_id} to 100 % needs an approved rollout_full request "
                           f'(target {{"model_id": {model_id}}}): request it, have a second operator approve it, '
                           "then pass its id")
    request = require_approved(conn, approval_id, "rollout_full", now=now)
    if str(request.target.get("model_id")) != str(model_id):
        raise RolloutError(f"approval request {approval_id} approves model {request.target.get('model_id')}, "
                           f"not model {model_id}")
    return request.id


def set_rollout(conn: Connection, model_id: int, percent: int, *, actor: str, now: datetime, reason: str,
                approval_id: int | None = None) -> Decision:
    """An operator sets a candidate's rollout percentage (0 pauses it; 100 needs an approval)."""
    if not 0 <= percent <= 100:
        raise RolloutError(f"a rollout percentage is within 0..100, got {percent}")
    _operator(conn, actor)
    details = {"reason": reason, "manual": True}
    if percent == 100:
        details["approval_id"] = _full_rollout_approved(conn, model_id, approval_id, now)
    model = _move(conn, model_id, percent, now=now, actor=actor, **details)
    return Decision(model["name"], model_id, model["version"], "step", model["rollout_percent"], percent,
                    f"set by {actor}: {reason}")


def promote(conn: Connection, model_id: int, *, actor: str, now: datetime, reason: str,
            approval_id: int | None) -> Decision:
    """An operator makes a model active at once (needs an approved rollout_full request)."""
    _operator(conn, actor)
    approval = _full_rollout_approved(conn, model_id, approval_id, now)
    model = _locked(conn, model_id)
    _activate(conn, model_id, now=now, actor=actor, reason=reason, manual=True, approval_id=approval)
    return Decision(model["name"], model_id, model["version"], "activate", model["rollout_percent"], 100,
                    f"promoted by {actor}: {reason}")


def rollback(conn: Connection, model_id: int, *, actor: str, now: datetime, reason: str) -> Decision:
    """An operator rolls a model back (a candidate to 0 %; an active model gives way to the previous one)."""
    _operator(conn, actor)
    model = _locked(conn, model_id)
    restored = _rollback(conn, model_id, now=now, actor=actor, reason=reason, manual=True)
    return Decision(model["name"], model_id, model["version"], "rollback", model["rollout_percent"], 0,
                    f"rolled back by {actor}: {reason}", restored_model_id=restored and restored["id"],
                    restored_version=restored and restored["version"])


# -------------------------------------------------------------------------------------------- alerts

_ALERT_SHAPES = {  # action -> (alert kind, severity)
    "start": ("rollout_step", "info"), "step": ("rollout_step", "info"), "activate": ("promoted", "info"),
    "rollback": ("rollback", "critical")}


def alerts_for(decision: Decision) -> list[Alert]:
    """The alerts a carried-out decision sends: none for a hold; a breach sends ``slo_breach`` before its
    ``rollback``."""
    if decision.action == "hold":
        return []
    name = f"{decision.task}/{decision.version}"
    title = {"start": f"{name}: rollout started at {decision.to_percent} %",
             "step": f"{name}: rollout {decision.from_percent} → {decision.to_percent} %",
             "activate": f"{name} is now the active {decision.task} model",
             "rollback": f"{name} rolled back from {decision.from_percent} % to 0 %"}[decision.action]
    fields = {"model id": str(decision.model_id), "task": decision.task}
    if decision.action == "rollback":
        fields["now serving"] = (f"{decision.restored_version} (id {decision.restored_model_id})"
                                 if decision.restored_model_id else "the active model, else the rules")
    metrics = decision.metrics or {}
    if metrics:
        fields["calls"] = str(metrics.get("n"))
        if metrics.get("latency_ms") is not None:
            fields["mean latency"] = f"{metrics['latency_ms']:.1f} ms"
        if metrics.get("err_rate") is not None:
            fields["error rate"] = f"{metrics['err_rate']:.2%}"
    kind, severity = _ALERT_SHAPES[decision.action]
    alerts = [Alert(kind=kind, title=title, text=decision.reason, fields=fields, severity=severity)]
    if decision.breaches:
        alerts.insert(0, Alert(kind="slo_breach", title=f"{name}: SLO breach", text="; ".join(decision.breaches),
                               fields=fields, severity="warning"))
    return alerts
