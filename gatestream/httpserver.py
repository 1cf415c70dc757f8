"""The HTTP port of every long-running process: ``/metrics``, ``/healthz``, ``/readyz``.

``/metrics`` is prometheus-client's own WSGI app; ``/healthz`` answers 200 while the
process runs; ``/readyz`` answers 200 only when the process's readiness check says so
(connected to broker and database, partitions assigned, ...), else 503 with the reason.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

log = structlog.get_logger("gatestream.http")

Readiness = Callable[[], tuple[bool, str]]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


class _ThreadingWSGIServer(WSGIServer):
    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(target=self._handle, args=(request, client_address), daemon=True)
        t.start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        finally:
            self.shutdown_request(request)


class OpsServer:
    """Serves metrics and health on ``host:port`` in a background thread."""

    def __init__(
        self, port: int, ready: Readiness | None = None, *, host: str = "0.0.0.0",
        registry: CollectorRegistry = REGISTRY,
    ) -> None:  # fmt: skip
        self.ready = ready or (lambda: (True, "ok"))
        metrics_app = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            if path == "/readyz":
                try:
                    ok, reason = self.ready()
                except Exception as exc:  # a failing check means not ready, with the reason
                    ok, reason = False, f"readiness check failed: {exc}"
                start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [f"{reason}\n".encode()]
            if path in ("/metrics", "/"):
                body: Iterable[bytes] = metrics_app(environ, start_response)
                return body
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics, /healthz, /readyz\n"]

        self._server = make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)

    def start(self) -> OpsServer:
        self._thread.start()
        log.info("serving metrics and health", port=self.port, paths=["/metrics", "/healthz", "/readyz"])
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
