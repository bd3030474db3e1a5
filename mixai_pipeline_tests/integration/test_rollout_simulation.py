"""The serving loop end to end on real PostgreSQL, real ONNX models and a real webhook receiver: simulated
uploads replayed through ``master_params`` (``lib/serving/simulator.py``), the rollout controller sensor
evaluated between batches. A healthy candidate walks 5 → 25 → 100 → active; each kind of breach (latency,
errors, a model that fails to load, drifted outputs, an outcome regression) rolls it back within one
evaluation with alerts and audit entries; the controller never promotes on too little traffic."""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg
import pytest
from sqlalchemy import text

from mixai_pipeline.defs.serving.sensors import rollout_controller_sensor
from mixai_pipeline.lib.demo.webhook import LocalWebhookReceiver
from mixai_pipeline.lib.governance.access import add_operator
from mixai_pipeline.lib.serving import simulator
from mixai_pipeline.lib.serving.flags import FLAGS, set_flag
from mixai_pipeline.lib.training.serving import ServingClient
from mixai_pipeline.resources import Alerts, Clock, Database, RolloutPolicyResource

MIN_N = 120   # PSI on fewer calls is noise (its null mean is about 9 / n)


@pytest.fixture
def loop(db_url, engine, local_store):
    now = datetime.now(timezone.utc)
    add_operator(engine, "root", "admin", by="bootstrap", now=now)
    with engine.begin() as conn:
        for key in FLAGS:
            set_flag(conn, key, enabled=True, rollout_percent=100, actor="root", reason="serving loop test")
    healthy, reference = simulator.healthy_master_model(seed=1)
    client = ServingClient(engine, local_store, resolve_ttl_s=0.0)
    with LocalWebhookReceiver() as receiver:
        state = _Loop(db_url, engine, local_store, client, receiver, healthy, reference)
        yield state
    state.client.close()


class _Loop:
    def __init__(self, db_url, engine, store, client, receiver, healthy, reference):
        self.db_url, self.engine, self.store, self.client = db_url, engine, store, client
        self.receiver, self.healthy, self.reference = receiver, healthy, reference
        self.batch = 0

    def traffic(self, n: int, *, drift: float = 0.0, reprocess: dict | None = None):
        self.batch += 1
        jobs = simulator.simulated_jobs(n, seed=1000 + self.batch, drift=drift)
        return simulator.replay(self.engine, self.client, jobs, reprocess=reprocess, seed=self.batch,
                                received_at=datetime.now(timezone.utc))

    def evaluate(self, **policy) -> str:
        """One sensor evaluation; returns its skip message (the decisions)."""
        resources = {"database": Database(url=self.db_url), "alerts": Alerts(webhook_url=self.receiver.url),
                     "clock": Clock(), "rollout_policy": RolloutPolicyResource(
                         **{"min_n": MIN_N, "min_stage_minutes": 0.0, "breach_min_n": 20, **policy})}
        with dg.build_sensor_context(resources=resources) as context:
            result = rollout_controller_sensor(context)
        return result.skip_message if isinstance(result, dg.SkipReason) else str(result)

    def model(self, model_id: int) -> dict:
        with self.engine.connect() as conn:
            return dict(conn.execute(text("SELECT status, rollout_percent FROM model_registry WHERE id = :id"),
                                     {"id": model_id}).mappings().one())

    def alerts(self) -> list[str]:
        return [body["text"] for body in self.receiver.received]

    def audit(self, action: str, model_id: int) -> int:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM audit_logs WHERE action = :a AND target_id = :id"),
                                {"a": action, "id": str(model_id)}).scalar_one()

    def register(self, onnx_bytes: bytes, label: str, *, reference=True) -> int:
        return simulator.register(self.engine, self.store, onnx_bytes, label=label,
                                  reference_inputs=self.reference if reference else None)["model_id"]

    def walk_to_active(self, model_id: int) -> list[int]:
        """Traffic and evaluations until the model is active; the percentages it went through."""
        seen = []
        self.evaluate()                                        # start at 5 %
        for _ in range(4):
            state = self.model(model_id)
            seen.append(state["rollout_percent"] if state["status"] == "candidate" else state["status"])
            if state["status"] != "candidate":
                break
            self.traffic(_jobs_for(state["rollout_percent"]))
            self.evaluate()
        return seen


def _jobs_for(percent: int) -> int:
    """Enough jobs that the treatment gets MIN_N calls at this rollout (users cluster: generous)."""
    return int(MIN_N * 100 / percent * 1.3)


def test_healthy_candidate_walks_5_25_100_then_active(loop):
    model_id = loop.register(loop.healthy, "healthy")
    seen = loop.walk_to_active(model_id)
    assert seen == [5, 25, 100, "active"]
    assert loop.model(model_id) == {"status": "active", "rollout_percent": 100}
    assert loop.audit("model.rollout", model_id) == 3 and loop.audit("model.activated", model_id) == 1
    texts = loop.alerts()
    assert any("rollout started at 5 %" in t for t in texts)
    assert any("5 → 25 %" in t for t in texts) and any("25 → 100 %" in t for t in texts)
    assert any("is now the active master_reg model" in t for t in texts)
    with loop.engine.connect() as conn:
        sources = dict(conn.execute(text(
            "SELECT source, count(*) FROM master_params WHERE task = 'master_reg' GROUP BY source")).all())
        applied = conn.execute(text(
            "SELECT answer -> 'params' FROM master_params WHERE source = 'model' LIMIT 1")).scalar_one()
    assert sources["model"] > 0 and sources["rules"] > 0      # control users were served by the rules
    assert len(applied) == 4


def test_never_promotes_on_too_little_traffic(loop):
    model_id = loop.register(loop.healthy, "healthy")
    loop.evaluate()
    assert loop.model(model_id)["rollout_percent"] == 5
    loop.traffic(100)                                         # ~5 calls reach the 5 % treatment
    message = loop.evaluate()
    assert loop.model(model_id)["rollout_percent"] == 5
    assert f"of {MIN_N} calls needed at 5 %" in message
    # enough calls but the stage is younger than its minimum time: still no step
    loop.traffic(_jobs_for(5))
    message = loop.evaluate(min_stage_minutes=60.0)
    assert loop.model(model_id)["rollout_percent"] == 5 and "stage open" in message


def test_model_without_output_reference_is_never_promoted(loop):
    model_id = loop.register(loop.healthy, "blind", reference=False)
    loop.evaluate()
    loop.traffic(_jobs_for(5))
    message = loop.evaluate()
    assert loop.model(model_id)["rollout_percent"] == 5 and "no output reference" in message


def _rolled_back_after_one_evaluation(loop, model_id: int, *, expect: str, jobs: int, **traffic):
    loop.evaluate()
    assert loop.model(model_id)["rollout_percent"] == 5
    loop.traffic(jobs, **traffic)
    loop.evaluate()
    assert loop.model(model_id) == {"status": "rolled_back", "rollout_percent": 0}
    assert loop.audit("model.rolled_back", model_id) == 1
    texts = loop.alerts()
    assert any("SLO breach" in t for t in texts) and any("rolled back from 5 %" in t for t in texts)
    breach = next(b for b in loop.receiver.received if "SLO breach" in b["text"])
    assert expect in str(breach["blocks"])
    # the users of the treatment are back on the active model (here: none, so the rules) from the next job on
    after = loop.traffic(50)
    assert "master_reg model" not in after.variants


def test_latency_breach_rolls_back(loop):
    healthy_id = loop.register(loop.healthy, "base")
    loop.walk_to_active(healthy_id)
    slow = simulator.slow_master_model(loop.healthy)
    slow_id = loop.register(slow, "slow")
    loop.evaluate()
    assert loop.model(slow_id)["rollout_percent"] == 5
    loop.traffic(_jobs_for(5) // 4)             # ~40 calls of the slow model: more than breach_min_n
    loop.evaluate()
    assert loop.model(slow_id) == {"status": "rolled_back", "rollout_percent": 0}
    assert loop.model(healthy_id) == {"status": "active", "rollout_percent": 100}   # the active one stays
    breach = next(b for b in loop.receiver.received if "SLO breach" in b["text"])
    assert "mean latency" in str(breach["blocks"])


def test_error_breach_rolls_back(loop):
    model_id = loop.register(simulator.nan_master_model(loop.healthy), "nan")
    _rolled_back_after_one_evaluation(loop, model_id, expect="error rate", jobs=_jobs_for(5) // 2)


def test_load_failure_rolls_back_at_the_first_call(loop):
    registered = simulator.register(loop.engine, loop.store, loop.healthy, label="corrupt",
                                    reference_inputs=loop.reference)
    simulator.corrupt_stored_model(loop.store, "master_reg", registered["version"])
    _rolled_back_after_one_evaluation(loop, registered["model_id"], expect="failed to load", jobs=200)


def test_output_drift_rolls_back(loop):
    model_id = loop.register(loop.healthy, "drifted")
    _rolled_back_after_one_evaluation(loop, model_id, expect="output drift", jobs=_jobs_for(5), drift=1.5)


def test_outcome_regression_rolls_back(loop):
    model_id = loop.register(loop.healthy, "worse")
    _rolled_back_after_one_evaluation(loop, model_id, expect="re-process rate", jobs=1200,
                                      reprocess={"treatment": 0.6, "control": 0.1})


def test_breaking_active_model_restores_the_previous_one(loop):
    first = loop.register(loop.healthy, "first")
    assert loop.walk_to_active(first)[-1] == "active"
    second_bytes, _ = simulator.healthy_master_model(seed=2)
    second = loop.register(second_bytes, "second")
    assert loop.walk_to_active(second)[-1] == "active"
    assert loop.model(first)["status"] == "retired"
    with loop.engine.connect() as conn:
        version = conn.execute(text("SELECT version FROM model_registry WHERE id = :id"), {"id": second}).scalar_one()
    simulator.corrupt_stored_model(loop.store, "master_reg", version)
    loop.client.close()            # a fresh serving process: it has to load the (now corrupt) model again
    loop.client = ServingClient(loop.engine, loop.store, resolve_ttl_s=0.0)
    loop.traffic(30)
    loop.evaluate()
    assert loop.model(second)["status"] == "rolled_back"
    assert loop.model(first) == {"status": "active", "rollout_percent": 100}
    assert any("now serving" in str(b["blocks"]) and "first" in str(b["blocks"]) for b in loop.receiver.received)
