"""Enqueueing: argument validation, transactions, options, and migrations."""

from __future__ import annotations

import datetime as dt
import decimal
import threading
from typing import Any

import psycopg
import pytest

from reliable_jobs import App, InvalidArgumentError, JobContext, call
from tests.helpers import fetch, scalar


def register_noop(app: App) -> Any:
    @app.job(name="noop")
    def noop(ctx: JobContext, *args: Any, **kwargs: Any) -> None:
        pass

    return noop


BAD_ARGUMENTS = [
    (float("nan"), "nan"),
    (float("inf"), "inf"),
    (float("-inf"), "-inf"),
    ("a\x00b", "NUL"),
    ({1: "a"}, "key 1"),
    ({"a\x00": 1}, "NUL"),
    ({"x", "y"}, "set"),
    (b"bytes", "bytes"),
    (object(), "object"),
    (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "datetime"),
    (decimal.Decimal("1.5"), "Decimal"),
    ([1, [2, float("nan")]], "args[0][1][1]"),
]


@pytest.mark.parametrize(("value", "named"), BAD_ARGUMENTS)
def test_bad_argument_rejected(
    app: App, db: psycopg.Connection[Any], value: Any, named: str
) -> None:
    noop = register_noop(app)

    with pytest.raises(InvalidArgumentError) as raised:
        noop.enqueue(value)

    assert named in str(raised.value)
    assert scalar(db, app.schema, "SELECT count(*) FROM {}.jobs") == 0


def test_bad_keyword_argument_named(app: App, db: psycopg.Connection[Any]) -> None:
    noop = register_noop(app)

    with pytest.raises(InvalidArgumentError, match=r"kwargs\['amount'\]"):
        noop.enqueue(amount=float("nan"))

    assert scalar(db, app.schema, "SELECT count(*) FROM {}.jobs") == 0


def test_bulk_with_one_bad_item_inserts_none(app: App, db: psycopg.Connection[Any]) -> None:
    noop = register_noop(app)

    with pytest.raises(InvalidArgumentError, match="item 2"):
        noop.enqueue_many([call(1), call(2), call(float("nan"))])

    assert scalar(db, app.schema, "SELECT count(*) FROM {}.jobs") == 0


def test_arguments_round_trip(app: App, db: psycopg.Connection[Any]) -> None:
    noop = register_noop(app)
    args = (1, 2.5, "é", None, True, [1, {"a": [2]}], (3, 4))
    kwargs = {"big": 2**70, "nested": {"k": "v"}}

    job_id = noop.enqueue(*args, **kwargs)

    rows = fetch(db, app.schema, "SELECT args, kwargs FROM {}.jobs WHERE id = %s", job_id)
    assert rows == [([1, 2.5, "é", None, True, [1, {"a": [2]}], [3, 4]], kwargs)]


def test_enqueue_many_returns_ids_in_order(app: App, db: psycopg.Connection[Any]) -> None:
    noop = register_noop(app)

    ids = noop.enqueue_many(call(n) for n in range(500))

    rows = fetch(db, app.schema, "SELECT id, args FROM {}.jobs ORDER BY id")
    assert ids == [row[0] for row in rows]
    assert [row[1] for row in rows] == [[n] for n in range(500)]


def test_enqueue_many_rejects_plain_tuples(app: App) -> None:
    noop = register_noop(app)

    with pytest.raises(InvalidArgumentError, match=r"reliable_jobs\.call"):
        noop.enqueue_many([(1,)])


def test_enqueue_joins_transaction(app: App, dsn: str, db: psycopg.Connection[Any]) -> None:
    noop = register_noop(app)

    with psycopg.connect(dsn) as conn:
        noop.configure(connection=conn).enqueue(1)
        assert scalar(db, app.schema, "SELECT count(*) FROM {}.jobs") == 0
        conn.rollback()
        noop.configure(connection=conn).enqueue(2)
        conn.commit()

    rows = fetch(db, app.schema, "SELECT args FROM {}.jobs")
    assert rows == [([2],)]


def test_naive_run_at_rejected(app: App, db: psycopg.Connection[Any]) -> None:
    noop = register_noop(app)

    with pytest.raises(InvalidArgumentError, match="no time zone"):
        noop.configure(run_at=dt.datetime(2030, 1, 1, 12, 0))

    assert scalar(db, app.schema, "SELECT count(*) FROM {}.jobs") == 0


def test_delay_counts_from_database_clock(app: App, db: psycopg.Connection[Any]) -> None:
    noop = register_noop(app)

    job_id = noop.configure(delay=dt.timedelta(minutes=5)).enqueue()

    # created_at and run_at come from the same now() of the insert.
    seconds = scalar(
        db,
        app.schema,
        "SELECT extract(epoch FROM run_at - created_at) FROM {}.jobs WHERE id = %s",
        job_id,
    )
    assert seconds == 300


def test_aware_run_at_stored(app: App, db: psycopg.Connection[Any]) -> None:
    noop = register_noop(app)
    when = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))

    job_id = noop.configure(run_at=when).enqueue()

    assert scalar(db, app.schema, "SELECT run_at FROM {}.jobs WHERE id = %s", job_id) == when


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 40000}, "out of range"),
        ({"priority": "high"}, "pass an int"),
        ({"queue": ""}, "non-empty"),
        ({"delay": -1}, ">= 0"),
        ({"delay": float("nan")}, "finite"),
        ({"connection": "postgresql://"}, "psycopg.Connection"),
        ({"delay": 1, "run_at": dt.datetime.now(dt.UTC)}, "only one"),
    ],
)
def test_invalid_option_rejected(app: App, options: dict[str, Any], message: str) -> None:
    noop = register_noop(app)

    with pytest.raises(InvalidArgumentError, match=message):
        noop.configure(**options)


def test_duplicate_job_name_rejected(app: App) -> None:
    register_noop(app)

    with pytest.raises(InvalidArgumentError, match="already registered"):
        register_noop(app)


def test_invalid_schema_name_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="schema="):
        App("postgresql://", schema="Bad-Name")


def test_migrate_twice(app: App) -> None:
    assert app.migrate() == []


def test_migrate_concurrently(dsn: str, schema: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def migrate() -> None:
        barrier.wait()
        try:
            results.append(App(dsn, schema=schema).migrate())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(results) == [[], [], [], [1, 2, 3]]
