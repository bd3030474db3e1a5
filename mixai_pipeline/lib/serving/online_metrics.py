"""Online metrics of a served model over a time window, from ``model_predictions`` and ``ab_test_metrics``
(seed 000 §13, §18 ``getOnlineMetrics``), and their rows in ``model_metrics``.

Per model and window (``WINDOWS``: 1h, 1d, 7d, 30d ending at ``now``; or any span, for the rollout stage):

- ``n``: calls that asked the model; latency mean / p95 / p99 in ms (the whole call, fallback included);
- ``err_rate``: calls where the model itself failed — it did not load (``load_failed``, counted apart as
  ``load_failures`` too), raised (``run_failed``) or answered garbage (``bad_output``);
- ``fallback_rate``: calls the rules answered, for any reason (a timeout is slowness, not an error: it shows
  here and in the latency);
- ``drift``: PSI of each output against the model's training reference (``stats.psi``), over the most recent
  ``MAX_DRIFT_CALLS`` model answers of the window; None without a reference or answers;
- ``outcomes``: the experiment's re-process rate (``ab_test_metrics`` metric ``reprocessed``, 0/1 per job) for
  treatment and control, and the one-sided two-proportion test of "treatment re-processes more".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, text

from mixai_pipeline.lib.serving import stats

WINDOWS: dict[str, timedelta] = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "7d": timedelta(days=7),
                                 "30d": timedelta(days=30)}
ERROR_CODES = ("load_failed", "run_failed", "bad_output")
OUTCOME_METRIC = "reprocessed"
MAX_DRIFT_CALLS = 5000


def experiment_name(task: str, version: str) -> str:
    """The A/B experiment of a model's rollout: one per candidate model."""
    return f"{task}:{version}"


@dataclass(frozen=True)
class WindowMetrics:
    model_id: int
    task: str
    version: str
    window: str                 # 1h | 1d | 7d | 30d | stage
    start: datetime
    end: datetime
    n: int
    latency_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    err_rate: float | None
    fallback_rate: float | None
    load_failures: int
    drift: dict[str, float] | None
    outcomes: dict | None

    @property
    def max_psi(self) -> float | None:
        return max(self.drift.values()) if self.drift else None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["start"], out["end"] = self.start.isoformat(), self.end.isoformat()
        return out


_CALLS_SQL = text(
    """SELECT count(*) AS n, avg(latency_ms) AS latency_ms,
              percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS latency_p95_ms,
              percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS latency_p99_ms,
              avg(coalesce(fallback_code = ANY(:errors), false)::int) AS err_rate,  -- NULL code: no error
              avg((source = 'fallback')::int) AS fallback_rate,
              count(*) FILTER (WHERE fallback_code = 'load_failed') AS load_failures
       FROM model_predictions WHERE model_id = :model AND created_at > :start AND created_at <= :end""")

_OUTPUTS_SQL = text(
    """SELECT output FROM model_predictions
       WHERE model_id = :model AND source = 'model' AND output IS NOT NULL
             AND created_at > :start AND created_at <= :end
       ORDER BY created_at DESC LIMIT :limit""")

_OUTCOMES_SQL = text(
    """SELECT variant, count(*) AS n, coalesce(sum((value > 0)::int), 0) AS events FROM ab_test_metrics
       WHERE experiment = :experiment AND metric = :metric AND recorded_at <= :end
             AND ((variant = 'treatment' AND recorded_at > :start)
                  OR (variant = 'control' AND recorded_at > :control_start))
       GROUP BY variant""")


def model_window(conn: Connection, model: dict, start: datetime, end: datetime, *, window: str,
                 control_start: datetime | None = None) -> WindowMetrics:
    """The metrics of ``model`` (a ``model_registry`` row as a mapping) over (start, end]. Outcomes compare
    the treatment's window against the control since ``control_start`` (default: the same window)."""
    calls = conn.execute(_CALLS_SQL, {"model": model["id"], "start": start, "end": end,
                                      "errors": list(ERROR_CODES)}).mappings().one()
    drift = None
    if model.get("output_reference"):
        rows = conn.execute(_OUTPUTS_SQL, {"model": model["id"], "start": start, "end": end,
                                           "limit": MAX_DRIFT_CALLS}).scalars().all()
        outputs = [row for call in rows for row in (call if isinstance(call, list) else json.loads(call))]
        drift = stats.psi(model["output_reference"], outputs) or None
    outcomes = _outcomes(conn, experiment_name(model["name"], model["version"]), start, end,
                         control_start if control_start is not None else start)
    return WindowMetrics(
        model_id=model["id"], task=model["name"], version=model["version"], window=window, start=start, end=end,
        n=calls["n"], latency_ms=calls["latency_ms"], latency_p95_ms=calls["latency_p95_ms"],
        latency_p99_ms=calls["latency_p99_ms"],
        err_rate=None if calls["err_rate"] is None else float(calls["err_rate"]),
        fallback_rate=None if calls["fallback_rate"] is None else float(calls["fallback_rate"]),
        load_failures=calls["load_failures"], drift=drift, outcomes=outcomes)


def _outcomes(conn: Connection, experiment: str, start: datetime, end: datetime,
              control_start: datetime) -> dict | None:
    rows = {r["variant"]: r for r in conn.execute(_OUTCOMES_SQL, {
        "experiment": experiment, "metric": OUTCOME_METRIC, "start": start, "end": end,
        "control_start": control_start}).mappings()}
    if not rows:
        return None
    treatment, control = rows.get("treatment", {"n": 0, "events": 0}), rows.get("control", {"n": 0, "events": 0})
    test = stats.two_proportion_test(treatment["events"], treatment["n"], control["events"], control["n"])
    return {"metric": OUTCOME_METRIC, "treatment_n": treatment["n"], "control_n": control["n"],
            "treatment_rate": test.treatment_rate, "control_rate": test.control_rate, "z": test.z,
            "p_value": test.p_value}


_MODEL_COLUMNS = ("id, name, version, status, rollout_percent, rollout_updated_at, activated_at, output_reference, "
                  "created_at")


def registry_rows(conn: Connection, where: str, params: dict) -> list[dict]:
    """``model_registry`` rows (the columns serving and rollout read) matching ``where``."""
    return [dict(r) for r in conn.execute(text(f"SELECT {_MODEL_COLUMNS} FROM model_registry WHERE {where}"),
                                          params).mappings()]


def model_row(conn: Connection, model_id: int) -> dict | None:
    rows = registry_rows(conn, "id = :id", {"id": model_id})
    return rows[0] if rows else None


def monitored_models(conn: Connection, now: datetime) -> list[dict]:
    """The models worth a metrics row: serving (active, or a candidate in rollout) or called in the last 30 d."""
    return [dict(r) for r in conn.execute(text(
        f"""SELECT {_MODEL_COLUMNS} FROM model_registry m
            WHERE status = 'active' OR (status = 'candidate' AND rollout_percent > 0)
               OR EXISTS (SELECT 1 FROM model_predictions p WHERE p.model_id = m.id
                          AND p.created_at > :since AND p.created_at <= :now)
            ORDER BY name, id"""), {"since": now - WINDOWS["30d"], "now": now}).mappings()]


def windows_for(conn: Connection, model: dict, now: datetime) -> list[WindowMetrics]:
    return [model_window(conn, model, now - span, now, window=label) for label, span in WINDOWS.items()]


def store(conn: Connection, metrics: list[WindowMetrics]) -> int:
    """Upsert the rows of ``model_metrics`` (keyed by model, window and window end)."""
    rows = [{"model": m.model_id, "window": m.window, "end": m.end, "n": m.n, "lat": m.latency_ms,
             "p95": m.latency_p95_ms, "p99": m.latency_p99_ms, "err": m.err_rate, "fb": m.fallback_rate,
             "drift": json.dumps(m.drift) if m.drift is not None else None,
             "outcomes": json.dumps(m.outcomes) if m.outcomes is not None else None}
            for m in metrics if m.window in WINDOWS]
    if rows:
        conn.execute(text(
            """INSERT INTO model_metrics (model_id, "window", window_end, n, latency_ms, latency_p95_ms, latency_p99_ms,
                                          err_rate, fallback_rate, drift, outcomes)
               VALUES (:model, :window, :end, :n, :lat, :p95, :p99, :err, :fb, CAST(:drift AS jsonb),
                       CAST(:outcomes AS jsonb))
               ON CONFLICT (model_id, "window", window_end) DO UPDATE SET n = EXCLUDED.n,
                   latency_ms = EXCLUDED.latency_ms, latency_p95_ms = EXCLUDED.latency_p95_ms,
                   latency_p99_ms = EXCLUDED.latency_p99_ms, err_rate = EXCLUDED.err_rate,
                   fallback_rate = EXCLUDED.fallback_rate, drift = EXCLUDED.drift, outcomes = EXCLUDED.outcomes"""),
            rows)
    return len(rows)


def record_outcome(conn: Connection, job_id: object, *, value: float, metric: str = OUTCOME_METRIC,
                   recorded_at: datetime | None = None) -> int:
    """The product's outcome signal for a job (e.g. the user asked to re-process it: 1, kept it: 0), filed under
    every experiment the job was served in (its ``master_params`` rows with a variant); a second report for the
    same job replaces the first. Returns rows written."""
    return conn.execute(text(
        """INSERT INTO ab_test_metrics (experiment, variant, user_id, job_id, metric, value, recorded_at)
           SELECT mp.experiment, mp.variant, j.user_id, j.job_id, :metric, :value, coalesce(:at, now())
           FROM master_params mp JOIN jobs j USING (job_id)
           WHERE mp.job_id = CAST(:job AS uuid) AND mp.variant IS NOT NULL
           ON CONFLICT (experiment, job_id, metric) WHERE job_id IS NOT NULL
           DO UPDATE SET value = EXCLUDED.value, variant = EXCLUDED.variant, recorded_at = EXCLUDED.recorded_at"""),
        {"job": str(job_id), "metric": metric, "value": float(value), "at": recorded_at}).rowcount
