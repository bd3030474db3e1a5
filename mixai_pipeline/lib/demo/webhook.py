"""A local stand-in for a Slack incoming webhook: a real HTTP server on 127.0.0.1, for the demo and the tests.

Alert delivery is only worth testing over a real socket — retries, ``Retry-After``, timeouts and a sender that
must not wait on a slow receiver are all about HTTP, not about a mocked function. So this answers POSTs like
Slack does (``200 ok``, ``400 invalid_payload`` for a body that is not JSON), can be told to fail the first
``fail_first`` requests with a chosen status (500, or 429 with ``Retry-After``), and can ``hold`` every request
until ``release()`` to prove the sender does not block. It logs nothing: the demo prints what it ``received``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOLD_LIMIT_S = 60.0  # a held request is answered anyway after this, so a forgotten release() cannot hang a test


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, like Slack; every response carries a Content-Length

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, headers = receiver._arrived()
        if receiver.hold:
            receiver._released.wait(HOLD_LIMIT_S)
        document = None
        if status is None:
            try:
                document, status = json.loads(body), 200
            except ValueError:
                status = 400
        receiver._answered(status, document)
        reply = {200: b"ok", 400: b"invalid_payload", 429: b"rate_limited"}.get(status, b"error")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self) -> None:  # noqa: N802
        self.send_error(405, "POST only")

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silent: no access log on stderr
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: LocalWebhookReceiver

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up (a sender's timeout) is not worth a traceback on stderr


class LocalWebhookReceiver:
    """A Slack-compatible webhook on ``127.0.0.1:<free port>``, served from a daemon thread.

    ``received``: the JSON bodies answered with 200, in arrival order. ``posts``: every POST that arrived,
    including the ones answered with an error or still held. ``fail_first`` POSTs are answered with
    ``fail_status`` (plus ``Retry-After: retry_after`` when given); with ``hold``, each request waits for
    ``release()``. Use it as a context manager, or ``start()`` / ``close()``.
    """

    def __init__(self, *, fail_first: int = 0, fail_status: int = 500, retry_after: str | float | None = None,
                 hold: bool = False, path: str = "/services/T0000/B0000/local") -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.hold = hold
        self.path = path if path.startswith("/") else "/" + path
        self._cv = threading.Condition()
        self._received: list[dict] = []
        self._posts = 0
        self._statuses: list[int] = []
        self._released = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self) -> LocalWebhookReceiver:
        if self._server is None:
            self._server = _Server(("127.0.0.1", 0), _Handler)
            self._server.receiver = self
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                            name="local-webhook-receiver", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self.release()  # let held requests finish
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = self._thread = None

    def __enter__(self) -> LocalWebhookReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- public

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("LocalWebhookReceiver is not started (use it as a context manager or call start())")
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    @property
    def received(self) -> list[dict]:
        with self._cv:
            return list(self._received)

    @property
    def posts(self) -> int:
        with self._cv:
            return self._posts

    @property
    def statuses(self) -> list[int]:
        """The status each answered POST got, in the order they were answered."""
        with self._cv:
            return list(self._statuses)

    def release(self) -> None:
        """Answer the held requests, and every later one at once."""
        self._released.set()

    def wait_for(self, n: int, timeout_s: float = 10.0) -> bool:
        """True once ``n`` bodies were received (answered 200); False if ``timeout_s`` passed first."""
        with self._cv:
            return self._cv.wait_for(lambda: len(self._received) >= n, timeout=timeout_s)

    def wait_for_posts(self, n: int, timeout_s: float = 10.0) -> bool:
        """True once ``n`` POSTs arrived, whatever they were answered (or still held)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._posts >= n, timeout=timeout_s)

    # -------------------------------------------------------------------------------------- handler

    def _arrived(self) -> tuple[int | None, dict[str, str]]:
        """Count a POST; its forced status (and headers) while ``fail_first`` lasts, else None."""
        with self._cv:
            self._posts += 1
            self._cv.notify_all()
            if self._posts <= self.fail_first:
                return self.fail_status, ({} if self.retry_after is None else {"Retry-After": str(self.retry_after)})
            return None, {}

    def _answered(self, status: int, document: dict | None) -> None:
        with self._cv:
            if status == 200:
                self._received.append(document)
            self._statuses.append(status)
            self._cv.notify_all()
