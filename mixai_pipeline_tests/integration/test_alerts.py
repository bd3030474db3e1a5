"""Alert delivery over real HTTP to a local Slack-compatible receiver on 127.0.0.1 (no mocked requests):
payload shape and escaping, retries (5xx, 429 + Retry-After), giving up, no retry on 4xx, an unreachable
webhook, a send() that does not wait for the network, a full queue, no URL, and the run-failure sensor.

No assertion is about wall-clock time: "does not block" is proven by a receiver that holds the request."""

from __future__ import annotations

import logging
import socket

import dagster as dg
import pytest

from mixai_pipeline.defs.alerts.sensors import run_failure_alert_sensor
from mixai_pipeline.lib.demo.webhook import LocalWebhookReceiver
from mixai_pipeline.lib.serving.alerts import ALERT_KINDS, Alert, AlertSender, slack_payload
from mixai_pipeline.resources.alerts import Alerts

FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 10.0}


def alert(kind: str = "rollback", **overrides) -> Alert:
    values = {"title": "Rollback of mix_model v7", "text": "p95 latency over SLO", "severity": "critical",
              "fields": {"model": "mix_model", "version": 7}}
    values.update(overrides)
    return Alert(kind=kind, **values)


def send_one(url: str, max_attempts: int) -> AlertSender:
    """One alert sent and delivered or given up on (flushed), the sender closed."""
    sender = AlertSender(url, max_attempts=max_attempts, **FAST)
    sender.send(alert())
    assert sender.flush(10)
    sender.close()
    return sender


@pytest.fixture
def closed_port_url() -> str:
    """An http URL on a local port nothing listens on (bound, then released): connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_alert_validation_and_channels():
    with pytest.raises(ValueError, match="kind"):
        Alert(kind="nope", title="t", text="x")
    with pytest.raises(ValueError, match="severity"):
        Alert(kind="rollback", title="t", text="x", severity="fatal")
    assert {Alert(kind=k, title="t", text="x").channel for k in ("run_failed", "deletion_failed")} == {
        "#mixai-ops-alerts"}
    assert {Alert(kind=k, title="t", text="x").channel for k in ALERT_KINDS
            if k not in ("run_failed", "deletion_failed")} == {"#mixai-ml-alerts"}
    assert alert().fields == {"model": "mix_model", "version": "7"}  # values become strings


def test_delivered_payload_shape_and_escaping():
    with LocalWebhookReceiver() as receiver:
        sender = AlertSender(receiver.url, **FAST)
        sent = alert("slo_breach", title="SLO <breach> & co", text="p95 > 800 ms <@U123>", severity="warning",
                     fields={f"f{i}": f"v<{i}>" for i in range(12)})
        sender.send(sent)
        assert sender.flush(10)
        assert receiver.wait_for(1)
        sender.close()
    assert sender.stats() == {"sent": 1, "failed": 0, "dropped": 0, "skipped": 0}
    assert sender.history == [(sent, "delivered")]
    [body] = receiver.received
    assert body == slack_payload(sent)
    assert body["channel"] == "#mixai-ml-alerts"
    assert body["text"] == ":warning: SLO &lt;breach&gt; &amp; co"
    main, fields, context = body["blocks"]
    assert main == {"type": "section", "text": {
        "type": "mrkdwn", "text": "*SLO &lt;breach&gt; &amp; co*\np95 &gt; 800 ms &lt;@U123&gt;"}}
    assert len(fields["fields"]) == 10  # Slack's maximum
    assert fields["fields"][0] == {"type": "mrkdwn", "text": "*f0*\nv&lt;0&gt;"}
    assert context["type"] == "context"
    assert "slo_breach" in context["elements"][0]["text"] and "warning" in context["elements"][0]["text"]
    assert "2 more" in context["elements"][0]["text"]


def test_no_fields_no_fields_section():
    blocks = slack_payload(Alert(kind="promoted", title="v8 promoted", text="100 %"))["blocks"]
    assert [b["type"] for b in blocks] == ["section", "context"] and "fields" not in blocks[0]


def test_retried_after_500s_then_delivered():
    with LocalWebhookReceiver(fail_first=2, fail_status=500) as receiver:
        sender = send_one(receiver.url, max_attempts=4)
        assert receiver.statuses == [500, 500, 200]
    assert len(receiver.received) == 1
    assert sender.stats() == {"sent": 1, "failed": 0, "dropped": 0, "skipped": 0}


def test_429_with_retry_after_is_honoured_and_delivered():
    with LocalWebhookReceiver(fail_first=1, fail_status=429, retry_after="0") as receiver:
        sender = send_one(receiver.url, max_attempts=2)
        assert receiver.statuses == [429, 200]
    assert sender.stats()["sent"] == 1


def test_gives_up_after_max_attempts_without_raising(caplog):
    with LocalWebhookReceiver(fail_first=100, fail_status=503) as receiver:
        with caplog.at_level(logging.ERROR, logger="mixai_pipeline.lib.serving.alerts"):
            sender = send_one(receiver.url, max_attempts=3)
        assert receiver.posts == 3 and receiver.received == []
    assert sender.stats() == {"sent": 0, "failed": 1, "dropped": 0, "skipped": 0}
    assert sender.history[0][1] == "failed"
    assert any("after 3 attempt(s)" in r.getMessage() for r in caplog.records)
    assert all(receiver.path not in r.getMessage() for r in caplog.records)  # the URL's secret path is never logged


def test_400_is_not_retried():
    with LocalWebhookReceiver(fail_first=10, fail_status=400) as receiver:
        sender = send_one(receiver.url, max_attempts=4)
        assert receiver.posts == 1 and receiver.statuses == [400]
    assert sender.stats()["failed"] == 1 and sender.stats()["sent"] == 0


def test_unreachable_webhook_fails_quietly(closed_port_url):
    sender = send_one(closed_port_url, max_attempts=2)  # no exception, here or later
    assert sender.stats() == {"sent": 0, "failed": 1, "dropped": 0, "skipped": 0}


def test_send_returns_while_the_receiver_still_holds_the_request():
    with LocalWebhookReceiver(hold=True) as receiver:
        sender = AlertSender(receiver.url, **FAST)
        sender.send(alert())
        # send() has returned, yet the request cannot have been answered: the receiver is holding it.
        assert receiver.received == [] and sender.stats()["sent"] == 0
        assert receiver.wait_for_posts(1)  # it did go out, from the background thread
        assert sender.stats()["sent"] == 0 and sender.history == []
        receiver.release()
        assert sender.flush(10)
        sender.close()
        assert len(receiver.received) == 1
    assert sender.stats()["sent"] == 1


def test_full_queue_drops_and_counts():
    with LocalWebhookReceiver(hold=True) as receiver:
        sender = AlertSender(receiver.url, max_queue=1, **FAST)
        first, second, third = (alert(title=f"alert {i}") for i in range(3))
        sender.send(first)
        assert receiver.wait_for_posts(1)  # first is in flight (held), the queue is empty
        sender.send(second)                # queued: the queue is now full
        sender.send(third)                 # dropped
        assert sender.stats()["dropped"] == 1 and sender.history == [(third, "dropped")]
        receiver.release()
        assert sender.flush(10)
        sender.close()
        assert [b["text"] for b in receiver.received] == [":rotating_light: alert 0", ":rotating_light: alert 1"]
    assert sender.stats() == {"sent": 2, "failed": 0, "dropped": 1, "skipped": 0}


def test_no_url_logs_and_skips(caplog):
    sender = AlertSender(None)
    with caplog.at_level(logging.WARNING, logger="mixai_pipeline.lib.serving.alerts"):
        sender.send(alert(text="p95 latency over SLO for 10 min"))
    assert sender.stats() == {"sent": 0, "failed": 0, "dropped": 0, "skipped": 1}
    assert sender.history[0][1] == "skipped"
    assert any("p95 latency over SLO for 10 min" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert sender.flush(1)
    sender.close()
    assert AlertSender("  ").url is None  # empty: the same as unset


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "file:///etc/passwd", "hooks.slack.com/services/x",
                                 "http:///nohost"])
def test_invalid_url_scheme_is_rejected(url):
    with pytest.raises(ValueError, match="http:// or https://"):
        AlertSender(url)


def test_send_never_raises_on_a_non_alert(caplog):
    sender = AlertSender(None)
    sender.send("not an alert")  # type: ignore[arg-type]
    assert sender.stats()["skipped"] == 0


def test_resource_sends_and_flushes_at_teardown():
    with LocalWebhookReceiver() as receiver:
        resource = Alerts(webhook_url=receiver.url, max_attempts=2)
        assert resource.get_sender() is resource.get_sender()
        resource.send(alert("training_succeeded", title="mix_model v9 trained", severity="info"))
        assert receiver.wait_for(1)
        resource.get_sender().close()
    assert receiver.received[0]["text"] == ":information_source: mix_model v9 trained"


# ------------------------------------------------------------------------------------------- the sensor

@dg.op
def explode():
    raise RuntimeError("disk <full> while writing shard 3")


@dg.job
def failing_job():
    explode()


def test_run_failure_sensor_posts_a_run_failed_alert():
    instance = dg.DagsterInstance.ephemeral()
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False,
                                            tags={"dagster/partition": "2024-06-01"})
    assert not result.success
    with LocalWebhookReceiver() as receiver:
        with dg.build_run_status_sensor_context(
                sensor_name="run_failure_alert_sensor", dagster_instance=instance, dagster_run=result.dagster_run,
                dagster_event=result.get_run_failure_event(),
                resources={"alerts": Alerts(webhook_url=receiver.url)}) as context:
            run_failure_alert_sensor(context)
        # Leaving the context tore the resource down, which flushed the queue.
        assert receiver.wait_for(1)
    [body] = receiver.received
    assert body["channel"] == "#mixai-ops-alerts"
    assert body["text"] == ":rotating_light: Run failed: failing_job"
    assert "run_failed" in body["blocks"][-1]["elements"][0]["text"]
    assert "RuntimeError: disk &lt;full&gt; while writing shard 3" in body["blocks"][0]["text"]["text"]
    fields = {f["text"].split("\n", 1)[0]: f["text"].split("\n", 1)[1] for f in body["blocks"][1]["fields"]}
    assert fields["*job*"] == "failing_job"
    assert fields["*run id*"] == result.run_id
    assert fields["*partition*"] == "2024-06-01"
    assert fields["*failed steps*"] == "explode"


def test_run_failure_sensor_survives_an_unreachable_webhook(closed_port_url):
    instance = dg.DagsterInstance.ephemeral()
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    with dg.build_run_status_sensor_context(
            sensor_name="run_failure_alert_sensor", dagster_instance=instance, dagster_run=result.dagster_run,
            dagster_event=result.get_run_failure_event(),
            resources={"alerts": Alerts(webhook_url=closed_port_url, max_attempts=1)}) as context:
        assert run_failure_alert_sensor(context) is None


def test_sensor_loads_in_definitions_with_the_alerts_resource():
    defs = dg.Definitions(jobs=[failing_job], sensors=[run_failure_alert_sensor], resources={"alerts": Alerts()})
    sensor = defs.resolve_sensor_def("run_failure_alert_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 60
    assert "alerts" in sensor.required_resource_keys
