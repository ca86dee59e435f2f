"""A loopback S3 server for tests: moto's server app behind a fault-injecting WSGI layer.

`S3Server` serves moto's S3 on 127.0.0.1 (an ephemeral port, nothing leaves the machine)
and can make a bounded number of requests fail the way object stores fail in production:

- ``error_before``: answer 503 SlowDown without touching the store (throttling);
- ``error_after``: let the store do the request, then answer 500 InternalError (the
  client cannot tell whether it happened: retries must be idempotent);
- ``slow``: hold the request ``slow_s`` seconds before serving it (longer than the
  client's read timeout → the client times out and retries).

Faults hit every ``every``-th matching request until each budget is spent, so a run
sees them spread over GET/PUT/HEAD/LIST/COPY/DELETE, and the counts are available for
assertions (a test that injected nothing proves nothing).

Usable as a module of fixtures: ``pytest_plugins = ["s3_server"]`` or plain imports.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"

_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate. (injected)</Message></Error>")
_INTERNAL = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
             b"<Message>We encountered an internal error. Please try again. (injected)</Message></Error>")


@dataclass
class FaultPlan:
    """How many requests to disturb, and which (every `every`-th request whose method is
    in `methods`). Budgets are consumed in turn: before-errors, after-errors, slow."""

    error_before: int = 0
    error_after: int = 0
    slow: int = 0
    slow_s: float = 2.0
    every: int = 7
    methods: tuple[str, ...] = ("GET", "PUT", "HEAD", "POST", "DELETE")
    slow_methods: tuple[str, ...] = ("GET", "HEAD")  # reads: a timed-out write may land later
    injected: dict[str, int] = field(default_factory=lambda: {"error_before": 0, "error_after": 0, "slow": 0})
    by_method: dict[str, int] = field(default_factory=dict)
    seen: int = 0

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())


class FaultInjector:
    """WSGI middleware in front of moto's app."""

    def __init__(self, app):
        self.app = app
        self.plan = FaultPlan()
        self.requests = 0
        self._lock = threading.Lock()

    def set_plan(self, plan: FaultPlan | None) -> FaultPlan:
        with self._lock:
            self.plan = plan or FaultPlan()
        return self.plan

    def _choose(self, method: str) -> str | None:
        with self._lock:
            self.requests += 1
            p = self.plan
            if method not in p.methods:
                return None
            p.seen += 1
            if p.seen % p.every:
                return None
            for kind, budget in (("error_before", p.error_before), ("error_after", p.error_after),
                                 ("slow", p.slow)):
                if kind == "slow" and method not in p.slow_methods:
                    continue
                if p.injected[kind] < budget:
                    p.injected[kind] += 1
                    p.by_method[method] = p.by_method.get(method, 0) + 1
                    return kind
            return None

    def __call__(self, environ, start_response):
        kind = self._choose(environ.get("REQUEST_METHOD", "GET"))
        if kind == "error_before":
            _drain(environ)
            return _error(start_response, "503 Slow Down", _SLOWDOWN)
        if kind == "slow":
            time.sleep(self.plan.slow_s)
        if kind == "error_after":
            # Serve for real, throw the answer away: the write (or delete) did happen.
            body = b"".join(self.app(environ, lambda *a, **k: (lambda data: None)))
            del body
            return _error(start_response, "500 Internal Server Error", _INTERNAL)
        return self.app(environ, start_response)


def _drain(environ) -> None:
    stream = environ.get("wsgi.input")
    if stream is None:
        return
    try:
        n = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        n = 0
    if n:
        stream.read(n)
    elif environ.get("wsgi.input_terminated"):
        while stream.read(1 << 16):
            pass


def _error(start_response, status: str, body: bytes):
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body))),
                            ("x-amz-request-id", "injected")])
    return [body]


class S3Server:
    """moto S3 on 127.0.0.1:<ephemeral> with fault injection; `with S3Server() as s3: …`."""

    def __init__(self):
        self._server = None
        self._thread: threading.Thread | None = None
        self.faults: FaultInjector | None = None

    def start(self) -> "S3Server":
        from moto.moto_server.werkzeug_app import (DomainDispatcherApplication, MotoRequestHandler,
                                                   create_backend_app)
        from werkzeug.serving import make_server

        self.faults = FaultInjector(DomainDispatcherApplication(create_backend_app))
        # Port 0: the OS picks a free port; 127.0.0.1 only.
        self._server = make_server("127.0.0.1", 0, self.faults, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def storage_options(self, read_timeout: float | None = None, **extra) -> dict:
        """s3fs options for this server (what a user passes as prism4m's storage_options)."""
        so = {"key": ACCESS_KEY, "secret": SECRET_KEY,
              "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
              "skip_instance_cache": True}
        if read_timeout is not None:
            so["config_kwargs"] = {"read_timeout": read_timeout, "connect_timeout": read_timeout,
                                   "retries": {"max_attempts": 8, "mode": "standard"}}
        so.update(extra)
        return so

    def make_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                     aws_secret_access_key=SECRET_KEY).create_bucket(Bucket=name)


@pytest.fixture(scope="module")
def s3_server():
    """A fresh loopback S3 server per test module (moto keeps state in-process)."""
    with S3Server() as server:
        yield server
