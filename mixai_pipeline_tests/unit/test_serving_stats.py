"""The serving loop's pure parts: sticky A/B buckets, output drift (PSI), the two-proportion test, the rollout
policy, the SLO breaches of a window and the alerts a decision sends. No database."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy.stats import chisquare, norm

from mixai_pipeline.lib.serving import rollout, stats
from mixai_pipeline.lib.serving.alerts import Alert
from mixai_pipeline.lib.serving.bucketing import BUCKETS, DEFAULT_SALT, bucket, variant_for
from mixai_pipeline.lib.serving.online_metrics import WindowMetrics

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def users() -> list[str]:
    rng = random.Random(20260302)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(100_000)]


# ------------------------------------------------------------------------------------------- buckets

def test_a_bucket_is_deterministic_and_within_0_to_99():
    user = "6f1c2a4e-8d3b-4f7a-9c2e-1b5d7e9f0a13"
    first = bucket("master_reg:v2", user)
    assert first == bucket("master_reg:v2", user) == bucket("master_reg:v2", user, DEFAULT_SALT)
    assert first == bucket("master_reg:v2", uuid.UUID(user))  # a UUID and its canonical string agree
    assert all(0 <= bucket("master_reg:v2", uuid.UUID(int=i, version=4)) < BUCKETS for i in range(2000))
    with pytest.raises(ValueError, match="needs a name"):
        bucket("", user)


def test_the_bucket_depends_on_the_experiment_and_the_salt(users):
    sample = users[:2000]
    base = [bucket("master_reg:v2", u) for u in sample]
    other_experiment = [bucket("master_reg:v3", u) for u in sample]
    other_salt = [bucket("master_reg:v2", u, "another-secret") for u in sample]
    # Unrelated hashes agree on about 1 % of the users by chance.
    assert sum(a == b for a, b in zip(base, other_experiment, strict=True)) / len(sample) < 0.03
    assert sum(a == b for a, b in zip(base, other_salt, strict=True)) / len(sample) < 0.03


@pytest.mark.parametrize("percent", [5, 25, 50])
def test_each_side_of_a_split_is_within_one_point_of_its_target(users, percent):
    share = sum(bucket("preset_cls:v7", u) < percent for u in users) / len(users)
    assert abs(share - percent / 100) <= 0.01


def test_the_buckets_are_uniform(users):
    counts = Counter(bucket("preset_cls:v7", u) for u in users)
    assert set(counts) == set(range(BUCKETS))
    observed = [counts[b] for b in range(BUCKETS)]
    assert chisquare(observed).pvalue > 0.001


def test_two_experiments_pick_independent_users(users):
    first = {u for u in users if bucket("master_reg:v2", u) < 5}
    second = {u for u in users if bucket("preset_cls:v7", u) < 5}
    # Independent: 5 % of 5 % = 0.25 % of the users (250 of 100,000, sd ≈ 16); the same users would give 5 %.
    overlap = len(first & second) / len(users)
    assert abs(overlap - 0.0025) < 0.001


def test_variant_for_splits_at_the_rollout_percentage():
    assert variant_for(4, 5) == "treatment" and variant_for(5, 5) == "control"
    assert {variant_for(b, 0) for b in range(BUCKETS)} == {"control"}
    assert {variant_for(b, 100) for b in range(BUCKETS)} == {"treatment"}
    assert sum(variant_for(b, 25) == "treatment" for b in range(BUCKETS)) == 25


# ----------------------------------------------------------------------------------------------- PSI

@pytest.fixture(scope="module")
def numeric_reference() -> dict:
    rng = np.random.default_rng(7)
    training = np.column_stack([rng.normal(-14.0, 2.0, 20_000), rng.normal(0.0, 1.0, 20_000)])
    return stats.output_reference(training, ["target_lufs", "gain_db"])  # not in jsonb's key order


def test_a_numeric_reference_cuts_deciles(numeric_reference):
    assert numeric_reference["kind"] == "numeric"
    assert list(numeric_reference["outputs"]) == ["target_lufs", "gain_db"]
    for ref in numeric_reference["outputs"].values():
        assert len(ref["edges"]) == stats.DRIFT_BINS - 1 and ref["edges"] == sorted(ref["edges"])
        assert len(ref["shares"]) == stats.DRIFT_BINS
        assert math.isclose(sum(ref["shares"]), 1.0)
        assert all(abs(s - 0.1) < 0.001 for s in ref["shares"])
    unnamed = stats.output_reference(np.arange(100.0))
    assert list(unnamed["outputs"]) == ["0"]


def test_psi_of_the_same_distribution_is_small(numeric_reference):
    rng = np.random.default_rng(8)
    window = np.column_stack([rng.normal(-14.0, 2.0, 5000), rng.normal(0.0, 1.0, 5000)]).tolist()
    drift = stats.psi(numeric_reference, window)
    assert set(drift) == {"gain_db", "target_lufs"}
    assert all(0 <= v < 0.1 for v in drift.values())


def test_a_shift_of_one_standard_deviation_is_drift(numeric_reference):
    rng = np.random.default_rng(9)
    window = np.column_stack([rng.normal(-12.0, 2.0, 5000), rng.normal(0.0, 1.0, 5000)]).tolist()
    drift = stats.psi(numeric_reference, window)
    assert drift["target_lufs"] > 0.2
    assert drift["gain_db"] < 0.1  # only the shifted output is flagged


def test_psi_pairs_columns_by_name_whatever_the_key_order_of_the_stored_reference(numeric_reference):
    # jsonb keeps object keys sorted by length, then bytes, not in insertion order: a reference read back
    # from model_registry can list its outputs in another order than the model's columns.
    stored = json.loads(json.dumps(numeric_reference))
    stored["outputs"] = dict(sorted(stored["outputs"].items(), key=lambda kv: (len(kv[0]), kv[0])))
    assert list(stored["outputs"]) == ["gain_db", "target_lufs"]
    rng = np.random.default_rng(10)
    window = np.column_stack([rng.normal(-14.0, 2.0, 5000), rng.normal(0.0, 1.0, 5000)]).tolist()
    assert stats.psi(stored, window) == stats.psi(numeric_reference, window)


def test_class_shares_and_a_new_class():
    reference = stats.output_reference(np.array(["ok"] * 50 + ["warn"] * 30 + ["fail"] * 20))
    assert reference == {"kind": "classes", "shares": {"fail": 0.2, "ok": 0.5, "warn": 0.3}}
    same = ["ok"] * 500 + ["warn"] * 300 + ["fail"] * 200
    assert stats.psi(reference, same)["class"] == pytest.approx(0.0, abs=1e-12)
    unseen = ["ok"] * 400 + ["warn"] * 240 + ["fail"] * 160 + ["broken"] * 200
    assert stats.psi(reference, unseen)["class"] > 0.2


def test_empty_outputs_and_an_empty_reference():
    reference = stats.output_reference(np.array(["ok", "warn"]))
    assert stats.psi(reference, []) == {}
    with pytest.raises(ValueError, match="no outputs"):
        stats.output_reference(np.array([]))
    with pytest.raises(ValueError, match="no outputs"):
        stats.output_reference(np.zeros((0, 4)))


# -------------------------------------------------------------------------------- two-proportion test

def test_the_pooled_z_test_of_a_known_case():
    test = stats.two_proportion_test(30, 200, 15, 200)
    pooled = 45 / 400
    z = (30 / 200 - 15 / 200) / math.sqrt(pooled * (1 - pooled) * (1 / 200 + 1 / 200))
    assert test.treatment_rate == 0.15 and test.control_rate == 0.075
    assert test.z == pytest.approx(z) and test.z == pytest.approx(2.3736, abs=1e-4)
    assert test.p_value == pytest.approx(norm.sf(z)) and test.p_value == pytest.approx(0.0088, abs=1e-4)
    assert test.regression(0.05) and not test.regression(0.001)
    better = stats.two_proportion_test(15, 200, 30, 200)  # one-sided: a lower rate is no regression
    assert better.z == pytest.approx(-z) and better.p_value > 0.99 and not better.regression(0.05)


def test_no_verdict_on_too_few_events_or_an_empty_arm():
    few = stats.two_proportion_test(2, 50, 1, 50)  # 3 events in 100: 1.5 expected per arm
    assert few.p_value is None and few.z is None and not few.regression(0.05)
    assert few.treatment_rate == 0.04 and few.control_rate == 0.02
    all_events = stats.two_proportion_test(50, 50, 49, 50)  # non-events are as scarce
    assert all_events.p_value is None
    no_control = stats.two_proportion_test(10, 100, 0, 0)
    assert no_control == stats.ProportionTest(0.1, None, None, None) and not no_control.regression(0.05)
    no_treatment = stats.two_proportion_test(0, 0, 10, 100)
    assert no_treatment.treatment_rate is None and no_treatment.p_value is None


# ------------------------------------------------------------------------------------------- policy

def test_the_rollout_policy_is_validated():
    default = rollout.RolloutPolicy()
    assert default.steps == (5, 25, 100) and default.min_n == 200 and default.breach_min_n == 20
    assert rollout.RolloutPolicy(steps=(50, 100)).steps == (50, 100)
    for steps in ((), (5, 25), (25, 5, 100), (5, 5, 100), (0, 50, 100), (-5, 100), (5, 100, 100)):
        with pytest.raises(ValueError, match="rollout steps"):
            rollout.RolloutPolicy(steps=steps)
    with pytest.raises(ValueError, match="at least 1"):
        rollout.RolloutPolicy(min_n=0)
    with pytest.raises(ValueError, match="at least 1"):
        rollout.RolloutPolicy(breach_min_n=0)


POLICY = rollout.RolloutPolicy(min_n=100, breach_min_n=20, max_latency_ms=50.0, max_err_rate=0.01, max_psi=0.2,
                               alpha=0.05)


def window(n: int, *, latency_ms: float | None = 10.0, err_rate: float | None = 0.0, load_failures: int = 0,
           drift: dict | None = None, outcomes: dict | None = None) -> WindowMetrics:
    return WindowMetrics(model_id=7, task="master_reg", version="v2", window="stage", start=T0,
                         end=T0 + timedelta(hours=1), n=n, latency_ms=latency_ms, latency_p95_ms=latency_ms,
                         latency_p99_ms=latency_ms, err_rate=err_rate, fallback_rate=err_rate,
                         load_failures=load_failures, drift=drift, outcomes=outcomes)


def outcome(p_value: float | None) -> dict:
    return {"metric": "reprocessed", "treatment_n": 300, "control_n": 3000, "treatment_rate": 0.12,
            "control_rate": 0.08, "z": None if p_value is None else float(norm.isf(p_value)), "p_value": p_value}


def test_a_clean_window_breaks_nothing():
    assert rollout.breaches(window(500, drift={"gain_db": 0.05}, outcomes=outcome(0.4)), POLICY) == []
    assert rollout.breaches(window(0, latency_ms=None, err_rate=None), POLICY) == []


def test_a_load_failure_is_a_breach_at_any_n():
    [found] = rollout.breaches(window(1, err_rate=1.0, load_failures=1), POLICY)
    assert found == "the model failed to load (1 of 1 calls)"


def test_latency_and_errors_are_judged_from_breach_min_n_calls():
    assert rollout.breaches(window(19, latency_ms=80.0), POLICY) == []
    assert rollout.breaches(window(19, err_rate=0.5), POLICY) == []
    [slow] = rollout.breaches(window(20, latency_ms=80.0), POLICY)
    assert slow.startswith("mean latency 80.0 ms") and "20 calls" in slow
    [failing] = rollout.breaches(window(20, err_rate=0.05), POLICY)
    assert failing.startswith("error rate 5.0%")
    assert rollout.breaches(window(20, latency_ms=49.9, err_rate=0.009), POLICY) == []  # just under the limits
    assert len(rollout.breaches(window(20, latency_ms=50.0, err_rate=0.01), POLICY)) == 2  # the limits break


def test_drift_is_judged_from_min_n_calls_only():
    drifted = {"gain_db": 0.05, "target_lufs": 0.35}
    assert rollout.breaches(window(99, drift=drifted), POLICY) == []
    [found] = rollout.breaches(window(100, drift=drifted), POLICY)
    assert found.startswith("output drift: PSI target_lufs 0.35") and "gain_db" not in found


def test_an_outcome_regression_is_judged_by_its_p_value():
    [found] = rollout.breaches(window(5, outcomes=outcome(0.01)), POLICY)  # at any n, once the test gives a p
    assert "re-process rate 12.0%" in found and "p=0.0100" in found
    assert rollout.breaches(window(500, outcomes=outcome(0.2)), POLICY) == []
    assert rollout.breaches(window(500, outcomes=outcome(None)), POLICY) == []


# ------------------------------------------------------------------------------------------- alerts

def decision(action: str, **changes) -> rollout.Decision:
    base = rollout.Decision(task="master_reg", model_id=7, version="v2", action=action, from_percent=25,
                            to_percent=25, reason="why", metrics=window(300, latency_ms=12.5, err_rate=0.004).as_dict())
    return dataclasses.replace(base, **changes)


def test_a_hold_sends_no_alert():
    assert rollout.alerts_for(decision("hold", reason="stage open 10 min of 1 h 00 min")) == []


def test_a_rollback_with_breaches_sends_a_breach_then_the_rollback():
    found = ("the model failed to load (1 of 40 calls)", "error rate 2.5% ≥ 1% over 40 calls")
    alerts = rollout.alerts_for(decision("rollback", to_percent=0, reason="SLO breach: ...", breaches=found,
                                         restored_model_id=3, restored_version="v1"))
    assert [(a.kind, a.severity) for a in alerts] == [("slo_breach", "warning"), ("rollback", "critical")]
    assert all(isinstance(a, Alert) for a in alerts)
    breach, rolled_back = alerts
    assert breach.title == "master_reg/v2: SLO breach" and breach.text == "; ".join(found)
    assert rolled_back.title == "master_reg/v2 rolled back from 25 % to 0 %"
    assert rolled_back.fields["now serving"] == "v1 (id 3)"
    assert rolled_back.fields["calls"] == "300" and rolled_back.fields["mean latency"] == "12.5 ms"
    assert rolled_back.fields["error rate"] == "0.40%"
    manual = rollout.alerts_for(decision("rollback", to_percent=0, metrics=None))  # an operator's: no breach
    assert [a.kind for a in manual] == ["rollback"]
    assert manual[0].fields["now serving"] == "the active model, else the rules"


def test_steps_and_promotions_are_informational():
    [started] = rollout.alerts_for(decision("start", from_percent=0, to_percent=5, metrics=None))
    assert (started.kind, started.severity, started.title) == ("rollout_step", "info",
                                                               "master_reg/v2: rollout started at 5 %")
    [step] = rollout.alerts_for(decision("step", to_percent=100))
    assert step.title == "master_reg/v2: rollout 25 → 100 %"
    [promoted] = rollout.alerts_for(decision("activate", to_percent=100))
    assert (promoted.kind, promoted.title) == ("promoted", "master_reg/v2 is now the active master_reg model")
