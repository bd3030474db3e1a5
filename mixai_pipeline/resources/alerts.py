"""Alerts as a Dagster resource: the Slack-compatible webhook sender, bound once per run (or sensor tick).

The webhook URL is a secret and comes from the environment variable ``MIXAI_ALERT_WEBHOOK_URL``
(``settings.ENV_ALERT_WEBHOOK_URL``), through ``dg.EnvVar`` when it is set (``Alerts.from_env()``); unset,
alerts are only logged, which is what local runs and tests want. Sending never blocks or fails the step that
sends (see ``lib/serving/alerts.py``); at the end of the run the queue gets a bounded 10 s to drain.
"""

from __future__ import annotations

import logging
import os
import threading

import dagster as dg
from pydantic import Field, PrivateAttr

from mixai_pipeline import settings
from mixai_pipeline.lib.serving.alerts import Alert, AlertSender

logger = logging.getLogger(__name__)

TEARDOWN_FLUSH_S = 10.0  # what a run's end waits, at most, for queued alerts


class Alerts(dg.ConfigurableResource):
    """Training success/failure, rollout steps, promotions, rollbacks, SLO breaches and failed runs → Slack.

    ``alerts.send(Alert(kind="rollback", title=..., text=..., fields={...}, severity="critical"))`` returns at
    once. Configure ``webhook_url`` from ``MIXAI_ALERT_WEBHOOK_URL`` (``Alerts.from_env()`` does).
    """

    webhook_url: str | None = Field(
        default=None,
        description=f"Slack-compatible incoming webhook URL (a secret: set it from ${settings.ENV_ALERT_WEBHOOK_URL} "
                    "with dg.EnvVar); unset: alerts are only logged")
    timeout_s: float = Field(default=5.0, description="HTTP timeout of one delivery attempt, in seconds")
    max_attempts: int = Field(default=4, description="attempts per alert (connection errors, timeouts, 5xx, 429)")

    _sender: AlertSender | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def from_env(cls) -> Alerts:
        """The URL through ``dg.EnvVar`` when the variable is set (never inlined in the config), else log only."""
        if os.environ.get(settings.ENV_ALERT_WEBHOOK_URL):
            return cls(webhook_url=dg.EnvVar(settings.ENV_ALERT_WEBHOOK_URL))
        return cls()

    def get_sender(self) -> AlertSender:
        """This resource's one sender (and background thread), created on first use."""
        with self._lock:
            if self._sender is None:
                url = self.webhook_url
                if isinstance(url, dg.EnvVar):  # used outside a run, where Dagster has not resolved it
                    url = url.get_value()
                self._sender = AlertSender(url, timeout_s=self.timeout_s, max_attempts=self.max_attempts)
            return self._sender

    def send(self, alert: Alert) -> None:
        """Queue ``alert``; never raises, never waits on the network (a misconfigured URL is logged instead)."""
        try:
            sender = self.get_sender()
        except Exception:
            logger.exception("alerts misconfigured; not sent: [%s] %s — %s", alert.kind, alert.title, alert.text)
            return
        sender.send(alert)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        with self._lock:
            sender = self._sender
        if sender is not None:
            if not sender.flush(TEARDOWN_FLUSH_S):
                (context.log or logger).warning("alerts still undelivered %.0f s into teardown: the queued ones "
                                                "are dropped", TEARDOWN_FLUSH_S)
            sender.close(timeout_s=1.0)
