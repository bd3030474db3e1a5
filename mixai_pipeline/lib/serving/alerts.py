"""Slack-compatible alerts: what is worth waking someone for, and a sender that can never hurt the pipeline.

Training outcomes, rollout steps, promotions, rollbacks, SLO breaches and failed runs are posted to a
Slack incoming webhook (or anything speaking the same JSON). The URL is a secret, taken from
``MIXAI_ALERT_WEBHOOK_URL`` by the Dagster resource; this module only receives it and never logs it in full.

Delivery is the part that needs care. A webhook that is slow, rate-limited or down must not slow a training
run or a rollout step down, let alone fail it. So ``AlertSender.send`` only puts the alert on a bounded
in-memory queue; one daemon thread posts it, retrying what can get better (connection errors, timeouts, 5xx,
429 with its ``Retry-After``) with exponential backoff, and giving up — loudly in the log, never by raising —
on what cannot (other 4xx) or after ``max_attempts``. A full queue drops the newest alert and counts it
rather than growing without bound. Without a URL (local runs, tests) alerts are only logged.

No Dagster import here: the resource (``mixai_pipeline.resources.alerts``) and the run-failure sensor wrap it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

logger = logging.getLogger(__name__)

ALERT_KINDS = ("training_succeeded", "training_failed", "rollout_step", "promoted", "rollback", "slo_breach",
               "run_failed", "deletion_failed")
SEVERITIES = ("info", "warning", "critical")
# Seed: model life-cycle news goes to the ML channel, broken plumbing to the ops channel.
ML_CHANNEL = "#mixai-ml-alerts"
OPS_CHANNEL = "#mixai-ops-alerts"
OPS_KINDS = frozenset({"run_failed", "deletion_failed"})

SEVERITY_EMOJI = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}
# Slack's limits: 10 fields per section, 2000 characters per field, 3000 per section text.
MAX_FIELDS = 10
MAX_FIELD_CHARS = 2000
MAX_SECTION_CHARS = 3000
HISTORY_SIZE = 200
STATUSES = ("delivered", "failed", "dropped", "skipped")


@dataclass(frozen=True)
class Alert:
    """One alert. ``fields`` are short name → value facts (model version, metric, run id...), shown as a grid."""

    kind: str
    title: str
    text: str
    fields: dict[str, str] = field(default_factory=dict)
    severity: str = "info"

    def __post_init__(self) -> None:
        if self.kind not in ALERT_KINDS:
            raise ValueError(f"alert kind {self.kind!r} is not one of {', '.join(ALERT_KINDS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")
        # A private copy with string values: the caller may keep mutating its dict, and values are often numbers.
        object.__setattr__(self, "fields", {str(k): str(v) for k, v in (self.fields or {}).items()})

    @property
    def channel(self) -> str:
        return OPS_CHANNEL if self.kind in OPS_KINDS else ML_CHANNEL


def slack_escape(text: str) -> str:
    """Slack's three control characters as the entities it expects (``&`` first, so entities stay intact)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(alert: Alert) -> dict:
    """The incoming-webhook body: a one-line ``text`` fallback (notifications, old clients) and Block Kit blocks."""
    title = slack_escape(" ".join(alert.title.split()))  # one line, whatever the caller passed
    blocks: list[dict] = [{
        "type": "section",
        "text": {"type": "mrkdwn", "text": _clip(f"*{title}*\n{slack_escape(alert.text)}", MAX_SECTION_CHARS)},
    }]
    items = list(alert.fields.items())
    if items:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": _clip(f"*{slack_escape(name)}*\n{slack_escape(value)}", MAX_FIELD_CHARS)}
            for name, value in items[:MAX_FIELDS]]})
    context = f"kind: `{alert.kind}` · severity: *{alert.severity}*"
    if len(items) > MAX_FIELDS:
        context += f" · {len(items) - MAX_FIELDS} more field(s) not shown"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": f"{SEVERITY_EMOJI[alert.severity]} {title}", "channel": alert.channel, "blocks": blocks}


def redact_url(url: str) -> str:
    """``scheme://host[:port]/…``: enough to tell which webhook, without the token in its path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


def _retry_after(response: requests.Response) -> float | None:
    """A numeric ``Retry-After`` in seconds (Slack sends those); an HTTP date or garbage: None (use the backoff)."""
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


class AlertSender:
    """Posts alerts to a Slack-compatible webhook from one background thread; ``send`` never raises or blocks.

    ``url`` None or empty: alerts are logged at WARNING and counted as ``skipped``. Counters (``sent``,
    ``failed``, ``dropped``, ``skipped``, also as ``stats()``) and ``history`` (the last 200 ``(alert, status)``)
    say what happened. ``flush`` waits for the queue to drain; ``close`` flushes and stops the thread (a later
    ``send`` starts a new one). The thread also ends by itself after ``idle_exit_s`` without alerts, so a
    sender that is never closed does not hold a thread for the life of the process.
    """

    def __init__(self, url: str | None, *, timeout_s: float = 5.0, max_attempts: int = 4, backoff_s: float = 0.5,
                 max_backoff_s: float = 10.0, max_queue: int = 1000, idle_exit_s: float = 60.0) -> None:
        url = (url or "").strip() or None
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                # The scheme only: the rest of a webhook URL is a secret.
                raise ValueError(f"alert webhook URL must be an http:// or https:// URL with a host; got scheme "
                                 f"{parts.scheme!r}{'' if parts.netloc else ' and no host'}")
        if timeout_s <= 0 or max_attempts < 1 or backoff_s < 0 or max_backoff_s < 0 or max_queue < 1:
            raise ValueError("AlertSender needs timeout_s > 0, max_attempts >= 1, backoff_s >= 0, "
                             "max_backoff_s >= 0 and max_queue >= 1")
        self.url = url
        self.timeout_s = float(timeout_s)
        self.max_attempts = int(max_attempts)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.max_queue = int(max_queue)
        self.idle_exit_s = float(idle_exit_s)

        # One condition guards the queue, the counters, the history and the thread handle.
        self._cv = threading.Condition()
        self._queue: collections.deque[Alert] = collections.deque()
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None  # the running thread's own stop signal
        self._counts = dict.fromkeys(("sent", "failed", "dropped", "skipped"), 0)
        self._history: collections.deque[tuple[Alert, str]] = collections.deque(maxlen=HISTORY_SIZE)

    def __repr__(self) -> str:
        target = redact_url(self.url) if self.url else "no URL (log only)"
        return f"AlertSender({target}, {self.stats()})"

    # ------------------------------------------------------------------------------------------ public

    def stats(self) -> dict[str, int]:
        with self._cv:
            return dict(self._counts)

    @property
    def history(self) -> list[tuple[Alert, str]]:
        """The last 200 handled alerts, oldest first, with delivered / failed / dropped / skipped."""
        with self._cv:
            return list(self._history)

    def send(self, alert: Alert) -> None:
        """Queue ``alert`` for delivery and return at once. Never raises: a bad alert or a full queue is logged."""
        try:
            if not isinstance(alert, Alert):
                raise TypeError(f"expected an Alert, got {type(alert).__name__}")
            if self.url is None:
                logger.warning("alert not sent (no webhook URL configured): [%s/%s] %s — %s %s", alert.kind,
                               alert.severity, alert.title, alert.text, alert.fields or "")
                self._record(alert, "skipped")
                return
            with self._cv:
                if len(self._queue) >= self.max_queue:
                    dropped = True
                else:
                    dropped = False
                    self._queue.append(alert)
                    self._ensure_thread()
                    self._cv.notify_all()
            if dropped:
                logger.error("alert queue full (%d): dropped [%s] %s", self.max_queue, alert.kind, alert.title)
                self._record(alert, "dropped")
        except Exception:
            logger.exception("could not queue alert %r", alert)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued alert has been handled; False if ``timeout_s`` passed first."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._queue and self._in_flight == 0, timeout=max(0.0, timeout_s))

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush (up to ``timeout_s``), then stop the thread. What is still queued then is dropped, and logged."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        self.flush(timeout_s)
        with self._cv:
            thread, stop = self._thread, self._stop
            self._thread = self._stop = None
            left = list(self._queue)
            self._queue.clear()
            if stop is not None:
                stop.set()  # also cuts a retry's backoff short
            self._cv.notify_all()
        for alert in left:
            logger.error("alert sender closed before delivery: dropped [%s] %s", alert.kind, alert.title)
            self._record(alert, "dropped")
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))

    # ---------------------------------------------------------------------------------------- internal

    def _record(self, alert: Alert, status: str) -> None:
        with self._cv:
            self._counts[{"delivered": "sent"}.get(status, status)] += 1
            self._history.append((alert, status))

    def _ensure_thread(self) -> None:
        # Called with the lock held.
        if self._thread is None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(self._stop,), name="mixai-alert-sender",
                                            daemon=True)
            self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        session = requests.Session()
        try:
            while True:
                with self._cv:
                    # Wait for work; leave when told to, or when idle long enough (deciding under the lock, so
                    # a concurrent send() either sees this thread gone and starts another, or is picked up here).
                    if not self._cv.wait_for(lambda: self._queue or stop.is_set(), timeout=self.idle_exit_s) \
                            or stop.is_set():
                        if self._thread is threading.current_thread():
                            self._thread = self._stop = None
                        return
                    alert = self._queue.popleft()
                    self._in_flight += 1
                try:
                    status = self._deliver(session, alert, stop)
                except Exception:  # a bug here must not kill the thread and strand the queue
                    logger.exception("alert [%s] %s: unexpected error while delivering", alert.kind, alert.title)
                    status = "failed"
                with self._cv:  # an RLock: _record may take it again
                    self._in_flight -= 1
                    self._record(alert, status)
                    self._cv.notify_all()
        finally:
            session.close()

    def _deliver(self, session: requests.Session, alert: Alert, stop: threading.Event) -> str:
        payload = slack_payload(alert)
        target = redact_url(self.url)
        reason = "not attempted"
        for attempt in range(1, self.max_attempts + 1):
            wait: float | None = None
            try:
                response = session.post(self.url, json=payload, timeout=self.timeout_s)
            except requests.RequestException as exc:  # connection refused/reset, timeout, DNS...
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= response.status_code < 300:
                    return "delivered"
                reason = f"HTTP {response.status_code} {response.text[:200]!r}"
                if response.status_code == 429:
                    wait = _retry_after(response)
                elif response.status_code < 500:
                    # A bad URL, a revoked webhook or a payload Slack rejects: retrying will not help.
                    logger.error("alert [%s] %s rejected by %s, not retried: %s", alert.kind, alert.title, target,
                                 reason)
                    return "failed"
            if attempt == self.max_attempts:
                break
            if wait is None:
                wait = self.backoff_s * 2 ** (attempt - 1)
            logger.info("alert [%s] attempt %d/%d to %s failed (%s); retrying in %.2f s", alert.kind, attempt,
                        self.max_attempts, target, reason, min(wait, self.max_backoff_s))
            if stop.wait(min(wait, self.max_backoff_s)):
                reason += " (sender closed while waiting to retry)"
                break
        logger.error("alert [%s] %s not delivered to %s after %d attempt(s): %s", alert.kind, alert.title, target,
                     attempt, reason)
        return "failed"
