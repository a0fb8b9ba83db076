"""Webhook delivery to a receiver that honours an Idempotency-Key header.

Problem: a delivery can time out after the receiver processed it, and the
sender cannot ask the receiver what it got.

Guarantee: exactly once as the receiver records it. @idempotent gives each
event one key, the same on every retry, sent as the Idempotency-Key
header; the receiver drops repeats. With no check available,
on_uncertain="retry" delivers again after a crash, which the header makes
harmless.
"""

from __future__ import annotations

import urllib.error

from reliable_jobs import App, JobContext, JobFunction, current_effect_key, idempotent

from . import client
from .tables import PATTERN_RETRY


@idempotent(
    key="webhook:{event_id}",
    on_uncertain="retry",
    uncertain_errors=(TimeoutError, urllib.error.URLError),
)
def deliver(event_id: int) -> str:
    response = client.post(
        "webhooks",
        {"event": event_id, "type": "order.paid"},
        idempotency_key=current_effect_key(),
    )
    return str(response["id"])


def register(app: App) -> JobFunction[[int], None]:
    @app.job(name="deliver_webhook", retry=PATTERN_RETRY)
    def deliver_webhook(ctx: JobContext, event_id: int) -> None:
        deliver(event_id)

    return deliver_webhook
