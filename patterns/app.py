"""The App that registers every pattern; load it with --app patterns.app:build_app.

The database comes from RELIABLE_JOBS_DSN, the schema from PATTERNS_SCHEMA
(default reliable_jobs_demo), the provider from PROVIDER_URL.
"""

from __future__ import annotations

import os

from reliable_jobs import App

from . import charge, email, fulfil, webhook, widget_price

DEFAULT_SCHEMA = "reliable_jobs_demo"


def build_app(conninfo: str | None = None, schema: str | None = None) -> App:
    app = App(conninfo, schema=schema or os.environ.get("PATTERNS_SCHEMA", DEFAULT_SCHEMA))
    widget_price.register(app)
    charge.register(app)
    email.register(app)
    webhook.register(app)
    fulfil.register(app)
    return app
