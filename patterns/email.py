"""Email: send a verification email.

Problem: the mail service has no idempotency key and no way to ask whether
a message was sent. A worker that dies after sending sends again on retry.

Guarantee: at least once. The job writes nothing to the database and
needs no decorator: it returns, and the worker deletes it. Duplicates are
possible after a crash between the send and the deletion; the demo counts
them. Use this shape only where a second copy is acceptable, and document that.
"""

from __future__ import annotations

from reliable_jobs import App, JobContext, JobFunction

from . import client
from .tables import PATTERN_RETRY


def register(app: App) -> JobFunction[[int], None]:
    @app.job(name="send_verification_email", retry=PATTERN_RETRY)
    def send_verification_email(ctx: JobContext, user_id: int) -> None:
        client.post("emails", {"user": user_id, "template": "verify"})

    return send_verification_email
