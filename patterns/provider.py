"""A fake external provider: a real HTTP server on 127.0.0.1 with its own records.

It stands for a payment provider, a mail service, a webhook receiver and a
warehouse. Its records live in this process's memory, outside the queue's
database, and it counts every request it receives, so a repeated effect is
visible. Requests that carry an Idempotency-Key header it has seen before
return the first response and create nothing (as Stripe-like APIs do); the
mail endpoint ignores the header, as many mail services do.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

# Resources that honour an Idempotency-Key header.
KEYED = ("charges", "webhooks", "reservations", "shipments")


@dataclass
class ProviderRecords:
    """Everything the provider did, by resource."""

    requests: Counter[str] = field(default_factory=Counter)
    created: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    responses_by_key: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    replayed: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self, resource: str, body: dict[str, Any], key: str | None) -> dict[str, Any]:
        with self.lock:
            self.requests[resource] += 1
            if resource in KEYED and key and (resource, key) in self.responses_by_key:
                self.replayed[resource] += 1
                return self.responses_by_key[(resource, key)]
            record = {**body, "id": f"{resource[:-1]}_{len(self.created[resource]) + 1}"}
            self.created[resource].append(record)
            if resource in KEYED and key:
                self.responses_by_key[(resource, key)] = record
            return record

    def find(self, resource: str, field_name: str, value: Any) -> list[dict[str, Any]]:
        with self.lock:
            self.requests[f"lookup {resource}"] += 1
            return [r for r in self.created[resource] if str(r.get(field_name)) == str(value)]

    def count_by(self, resource: str, field_name: str) -> Counter[str]:
        """Return how many records of `resource` exist per value of `field_name`."""
        with self.lock:
            return Counter(str(record.get(field_name)) for record in self.created[resource])


class _Handler(BaseHTTPRequestHandler):
    records: ProviderRecords
    latency: tuple[float, float]

    def do_POST(self) -> None:
        self._wait()
        resource = urlparse(self.path).path.strip("/")
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._send(400, {"error": "the body is not JSON"})
            return
        if resource not in (*KEYED, "emails"):
            self._send(404, {"error": f"unknown resource {resource!r}"})
            return
        record = self.records.create(resource, body, self.headers.get("Idempotency-Key"))
        self._send(200, record)

    def do_GET(self) -> None:
        self._wait()
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        if parts[0] == "quotes" and len(parts) == 2:
            # A deterministic price per widget: a read with no effect.
            self._send(200, {"widget": parts[1], "price": 100 + int(parts[1]) % 50})
            return
        query = {name: values[0] for name, values in parse_qs(url.query).items()}
        if parts[0] in (*KEYED, "emails") and len(query) == 1:
            ((field_name, value),) = query.items()
            self._send(200, {"data": self.records.find(parts[0], field_name, value)})
            return
        self._send(404, {"error": f"unknown path {url.path!r}"})

    def _wait(self) -> None:
        low, high = self.latency
        if high > 0:
            time.sleep(random.uniform(low, high))

    def _send(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # thousands of requests; the records hold what matters


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A worker killed mid-request leaves a broken pipe; that is the demo
        # working, not a server error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class FakeProvider:
    """Run the provider on a free port of 127.0.0.1 in a background thread."""

    def __init__(self, latency: tuple[float, float] = (0.0, 0.0)) -> None:
        """Create the server; `latency` is the range of seconds each request takes."""
        self.records = ProviderRecords()
        handler = type("Handler", (_Handler,), {"records": self.records, "latency": latency})
        self.server = _QuietServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeProvider:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
