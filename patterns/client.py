"""The HTTP client the patterns use to reach the provider named by PROVIDER_URL."""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

# A call that takes longer than this may or may not have reached the
# provider: the patterns treat a timeout as an uncertain outcome.
TIMEOUT_SECONDS = 5.0


def provider_url() -> str:
    url = os.environ.get("PROVIDER_URL")
    if not url:
        raise RuntimeError("PROVIDER_URL is not set; start patterns.provider.FakeProvider first")
    return url


def post(resource: str, body: dict[str, Any], idempotency_key: str | None = None) -> Any:
    """POST a JSON body and return the decoded response."""
    headers = {"Content-Type": "application/json"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    request = urllib.request.Request(
        f"{provider_url()}/{resource}",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
        return json.loads(response.read())


def get(path: str) -> Any:
    """GET a path and return the decoded response."""
    with urllib.request.urlopen(f"{provider_url()}/{path}", timeout=TIMEOUT_SECONDS) as response:
        return json.loads(response.read())
