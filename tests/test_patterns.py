"""Each pattern under generated crash schedules, against the fake provider over HTTP."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings

from patterns import charge, email, fulfil, webhook, widget_price
from patterns.provider import FakeProvider
from patterns.tables import create_tables
from reliable_jobs import App
from reliable_jobs.testing import Crash, crash_schedules, replay
from tests.helpers import scalar

pytestmark = pytest.mark.slow

EXAMPLES = max(5, settings().max_examples // 2)


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProvider]:
    with FakeProvider() as running:
        monkeypatch.setenv("PROVIDER_URL", running.url)
        yield running


@pytest.fixture
def tables(app: App, db: psycopg.Connection[Any]) -> App:
    create_tables(db, app.schema)
    return app


def test_widget_price_exactly_once(
    tables: App, provider: FakeProvider, db: psycopg.Connection[Any]
) -> None:
    job = widget_price.register(tables)
    widgets = itertools.count(1)

    @settings(max_examples=EXAMPLES)
    @given(crash_schedules(["after_lock", "before_commit", "after_commit"]))
    def prop(schedule: list[Crash]) -> None:
        widget = next(widgets)
        report = replay(tables, job, widget, crashes=schedule)
        report.check_clean()
        updates = scalar(db, tables.schema, "SELECT updates FROM {}.widgets WHERE id = %s", widget)
        if updates != 1:
            raise report.violation(f"widget {widget} updated {updates} times")

    prop()


def test_charge_exactly_once(
    tables: App, provider: FakeProvider, db: psycopg.Connection[Any]
) -> None:
    job = charge.register(tables)
    orders = itertools.count(1)

    @settings(max_examples=EXAMPLES)
    @given(crash_schedules())
    def prop(schedule: list[Crash]) -> None:
        order = next(orders)
        report = replay(tables, job, order, 500, crashes=schedule)
        report.check_clean()
        charges = provider.records.count_by("charges", "order")[str(order)]
        marked = scalar(db, tables.schema, "SELECT updates FROM {}.orders WHERE id = %s", order)
        if charges != 1 or marked != 1:
            raise report.violation(f"order {order}: {charges} charges, marked {marked} times")

    prop()


def test_email_at_least_once(tables: App, provider: FakeProvider) -> None:
    job = email.register(tables)
    users = itertools.count(1)

    @settings(max_examples=EXAMPLES)
    @given(crash_schedules(["after_lock", "before_destroy", "after_destroy"]))
    def prop(schedule: list[Crash]) -> None:
        user = next(users)
        report = replay(tables, job, user, crashes=schedule)
        report.check_clean()
        sent = provider.records.count_by("emails", "user")[str(user)]
        if sent < 1:
            raise report.violation(f"user {user} got no email")

    prop()


def test_email_duplicates_after_crash(tables: App, provider: FakeProvider) -> None:
    """The pattern's stated weakness: a crash between send and delete sends twice."""
    job = email.register(tables)

    replay(tables, job, 1, crashes=[Crash("before_destroy")])

    assert provider.records.count_by("emails", "user")["1"] == 2


def test_webhook_exactly_once_for_receiver(tables: App, provider: FakeProvider) -> None:
    job = webhook.register(tables)
    events = itertools.count(1)

    @settings(max_examples=EXAMPLES)
    @given(crash_schedules())
    def prop(schedule: list[Crash]) -> None:
        event = next(events)
        report = replay(tables, job, event, crashes=schedule)
        report.check_clean()
        accepted = provider.records.count_by("webhooks", "event")[str(event)]
        if accepted != 1:
            raise report.violation(f"event {event} accepted {accepted} times")

    prop()


def test_fulfil_each_step_once(
    tables: App, provider: FakeProvider, db: psycopg.Connection[Any]
) -> None:
    job = fulfil.register(tables)
    orders = itertools.count(10_001)

    @settings(max_examples=EXAMPLES)
    @given(crash_schedules(max_crashes=4, max_nth=3))
    def prop(schedule: list[Crash]) -> None:
        order = next(orders)
        report = replay(tables, job, order, 900, crashes=schedule)
        report.check_clean()
        steps = {
            resource: provider.records.count_by(resource, "order")[str(order)]
            for resource in ("reservations", "charges", "shipments")
        }
        marked = scalar(
            db, tables.schema, "SELECT updates FROM {}.fulfilments WHERE order_id = %s", order
        )
        if set(steps.values()) != {1} or marked != 1:
            raise report.violation(f"order {order}: steps {steps}, marked {marked} times")

    prop()
