"""@idempotent in one process: the ledger's rules, one test per rule."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import psycopg
import pytest
from tenacity import stop_after_attempt, wait_fixed

from reliable_jobs import (
    App,
    EffectMismatchError,
    InvalidArgumentError,
    JobContext,
    NoLedgerError,
    ReliableJobsError,
    RetryPolicy,
    current_effect_key,
    idempotent,
    transactional_destroy,
)
from reliable_jobs.idempotency import OnUncertain, _fingerprint
from reliable_jobs.ledger import Ledger, list_effects, prune_effects, resolve_effect
from tests.helpers import fetch, scalar, wait_until, worker_thread

NO_WAIT = RetryPolicy(stop_after_attempt(5), wait_fixed(0))


def effect_rows(db: psycopg.Connection[Any], app: App) -> list[tuple[Any, ...]]:
    return fetch(db, app.schema, "SELECT key, state, result, calls FROM {}.effects ORDER BY key")


def job_row(db: psycopg.Connection[Any], app: App, job_id: int) -> tuple[Any, ...] | None:
    rows = fetch(
        db,
        app.schema,
        "SELECT attempts, error_count, expired_at IS NOT NULL, last_error_message "
        "FROM {}.jobs WHERE id = %s",
        job_id,
    )
    return rows[0] if rows else None


def drain(app: App) -> None:
    app.run_worker(burst=True, install_signal_handlers=False)


def abandon_claim(app: App, dsn: str, key: str, fingerprint_of: Any) -> None:
    """Leave a claim whose owner died: claim on a session, then end the session."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ledger = Ledger(conn, schema=app.schema, lock_class=app.effect_lock_class)
        claim = ledger.claim(key, fingerprint_of, None, None)
        assert claim.outcome == "claimed"


def fingerprint(**arguments: Any) -> str:
    """Return the fingerprint @idempotent stores for a call with these arguments."""
    return _fingerprint(arguments, fingerprint)


def test_retry_after_done_returns_stored_result(app: App, db: psycopg.Connection[Any]) -> None:
    calls: list[int] = []

    @idempotent(key="charge:{card}")
    def charge(card: int, amount: int) -> dict[str, Any]:
        calls.append(card)
        return {"charge_id": f"ch_{card}", "amount": amount}

    results: list[Any] = []

    @app.job(name="pay", retry=NO_WAIT)
    def pay(ctx: JobContext, card: int) -> None:
        results.append(charge(card, 500))
        if ctx.attempt == 1:
            raise RuntimeError("crash after the charge")

    pay.enqueue(42)
    drain(app)

    assert calls == [42]
    assert results == [{"charge_id": "ch_42", "amount": 500}] * 2
    assert effect_rows(db, app) == [("charge:42", "done", {"charge_id": "ch_42", "amount": 500}, 1)]


def test_same_key_in_two_jobs_calls_once(app: App, db: psycopg.Connection[Any]) -> None:
    calls: list[str] = []

    @idempotent(key="welcome:{user}")
    def send_welcome(user: int) -> None:
        calls.append(f"welcome {user}")

    @app.job(name="signup")
    def signup(ctx: JobContext, user: int) -> None:
        send_welcome(user)

    signup.enqueue(7)
    signup.enqueue(7)
    drain(app)

    assert calls == ["welcome 7"]


def test_ordinary_error_releases_claim(app: App, db: psycopg.Connection[Any]) -> None:
    calls: list[int] = []

    @idempotent(key="email:{user}")
    def send(user: int) -> str:
        calls.append(user)
        if len(calls) == 1:
            raise ConnectionRefusedError("mail server refused the connection")
        return "sent"

    @app.job(name="mail", retry=NO_WAIT)
    def mail(ctx: JobContext, user: int) -> None:
        send(user)

    job_id = mail.enqueue(3)
    drain(app)

    assert calls == [3, 3]
    assert effect_rows(db, app) == [("email:3", "done", "sent", 1)]
    assert job_row(db, app, job_id) is None


def test_uncertain_error_marks_claim_uncertain(app: App, db: psycopg.Connection[Any]) -> None:
    calls: list[int] = []

    @idempotent(key="charge:{card}", on_uncertain="fail", uncertain_errors=(TimeoutError,))
    def charge(card: int) -> str:
        calls.append(card)
        raise TimeoutError("provider did not answer in 30 s")

    @app.job(name="pay", retry=NO_WAIT)
    def pay(ctx: JobContext, card: int) -> None:
        charge(card)

    job_id = pay.enqueue(9)
    drain(app)

    assert calls == [9]
    assert effect_rows(db, app) == [("charge:9", "uncertain", None, 1)]
    attempts, _, expired, message = job_row(db, app, job_id) or ()
    assert attempts == 2
    assert expired
    assert "may or may not have happened" in message
    assert "ledger resolve 'charge:9' --done" in message


def test_busy_key_defers_without_error(app: App, dsn: str, db: psycopg.Connection[Any]) -> None:
    calls: list[int] = []
    release = threading.Event()

    @idempotent(key="slow:{n}")
    def slow(n: int) -> None:
        calls.append(n)
        release.wait(10)

    @app.job(name="first")
    def first(ctx: JobContext) -> None:
        slow(1)

    @app.job(name="second")
    def second(ctx: JobContext) -> None:
        slow(1)

    first.enqueue()
    with worker_thread(app, concurrency=2, poll_interval=0.1):
        wait_until(lambda: calls, 5, "the first call to start")
        second_id = second.enqueue()
        wait_until(
            lambda: scalar(
                db, app.schema, "SELECT run_at > now() FROM {}.jobs WHERE id = %s", second_id
            ),
            5,
            "the second job to be deferred",
        )
        assert job_row(db, app, second_id) == (0, 0, False, None)
        release.set()
        wait_until(
            lambda: scalar(db, app.schema, "SELECT count(*) FROM {}.jobs") == 0,
            10,
            "both jobs to finish",
        )

    assert calls == [1]


def test_mismatched_arguments_fail_for_review(app: App, db: psycopg.Connection[Any]) -> None:
    calls: list[int] = []

    @idempotent(key="refund:{order}")
    def refund(order: int, amount: int) -> None:
        calls.append(amount)

    @app.job(name="refund_job", retry=NO_WAIT)
    def refund_job(ctx: JobContext, order: int, amount: int) -> None:
        refund(order, amount)

    refund_job.enqueue(1, 100)
    drain(app)
    second = refund_job.enqueue(1, 250)
    drain(app)

    assert calls == [100]
    attempts, _, expired, message = job_row(db, app, second) or ()
    assert attempts == 1
    assert expired
    assert "recorded with other arguments" in message


def test_mismatch_error_is_typed(app: App) -> None:
    raised: list[BaseException] = []

    @idempotent(key="k")
    def effect(value: int) -> None:
        pass

    @app.job(name="twice", retry=NO_WAIT)
    def twice(ctx: JobContext) -> None:
        effect(1)
        try:
            effect(2)
        except EffectMismatchError as error:
            raised.append(error)

    twice.enqueue()
    drain(app)

    assert len(raised) == 1
    assert isinstance(raised[0], EffectMismatchError)
    assert raised[0].key == "k"


def test_effect_key_same_on_every_retry(app: App) -> None:
    seen: list[str] = []

    @idempotent(key=lambda user, **_: f"webhook:{user}", uncertain_errors=(TimeoutError,))
    def deliver(user: int, body: str = "") -> None:
        seen.append(current_effect_key())
        if len(seen) == 1:
            raise TimeoutError("receiver timed out")

    @app.job(name="hook", retry=NO_WAIT)
    def hook(ctx: JobContext) -> None:
        deliver(5, body="x")

    hook.enqueue()
    drain(app)

    assert seen == ["webhook:5", "webhook:5"]


def test_outside_job_is_error() -> None:
    @idempotent(key="x:{a}")
    def effect(a: int) -> None:
        raise AssertionError("must not be called")

    with pytest.raises(NoLedgerError, match="outside a running job"):
        effect(1)


def test_current_effect_key_outside_effect() -> None:
    with pytest.raises(ReliableJobsError, match="outside an @idempotent"):
        current_effect_key()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"key": ""}, "key="),
        ({"key": "k", "on_uncertain": "maybe"}, "on_uncertain="),
        ({"key": "k", "uncertain_errors": TimeoutError}, "uncertain_errors="),
        ({"key": "k", "check": "yes"}, "check="),
    ],
)
def test_invalid_options_rejected(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        idempotent(**options)


def test_unknown_key_field_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=r"names 'card_id'.*parameters \['card'\]"):

        @idempotent(key="charge:{card_id}")
        def charge(card: int) -> None:
            raise AssertionError("must not be called")


def test_key_fields_may_index_arguments() -> None:
    @idempotent(key="ship:{order[id]}:{address.city}")
    def ship(order: dict[str, int], address: Any) -> None:
        pass

    assert callable(ship)


@pytest.mark.parametrize(
    ("on_uncertain", "with_check", "expected_calls", "expected_state"),
    [
        ("retry", False, 1, "done"),
        ("retry", True, 0, "done"),
        ("skip", False, 0, "skipped"),
        ("skip", True, 0, "done"),
        ("fail", False, 0, "uncertain"),
        ("fail", True, 0, "done"),
    ],
)
def test_dead_owner_resolution(
    app: App,
    dsn: str,
    db: psycopg.Connection[Any],
    on_uncertain: OnUncertain,
    with_check: bool,
    expected_calls: int,
    expected_state: str,
) -> None:
    calls: list[int] = []

    def provider_has(card: int) -> str:
        return f"ch_{card}_found"

    @idempotent(
        key="charge:{card}", check=provider_has if with_check else None, on_uncertain=on_uncertain
    )
    def charge(card: int) -> str:
        calls.append(card)
        return f"ch_{card}_new"

    @app.job(name="pay", retry=NO_WAIT)
    def pay(ctx: JobContext, card: int) -> None:
        charge(card)

    abandon_claim(app, dsn, "charge:1", fingerprint(card=1))
    job_id = pay.enqueue(1)
    drain(app)

    assert len(calls) == expected_calls
    assert effect_rows(db, app)[0][1] == expected_state
    if expected_state == "uncertain":
        assert (job_row(db, app, job_id) or ())[2] is True
    else:
        assert job_row(db, app, job_id) is None


def test_falsy_check_falls_back_to_policy(app: App, dsn: str, db: psycopg.Connection[Any]) -> None:
    calls: list[int] = []

    @idempotent(key="charge:{card}", check=lambda card: None, on_uncertain="retry")
    def charge(card: int) -> str:
        calls.append(card)
        return "charged"

    @app.job(name="pay")
    def pay(ctx: JobContext, card: int) -> None:
        charge(card)

    abandon_claim(app, dsn, "charge:2", fingerprint(card=2))
    pay.enqueue(2)
    drain(app)

    assert calls == [2]
    assert effect_rows(db, app) == [("charge:2", "done", "charged", 2)]


def test_ledger_survives_job_rollback(app: App, db: psycopg.Connection[Any]) -> None:
    calls: list[int] = []

    @idempotent(key="ship:{order}")
    def ship(order: int) -> str:
        calls.append(order)
        return "shipped"

    @app.job(name="fulfil", retry=NO_WAIT)
    @transactional_destroy
    def fulfil(ctx: JobContext, order: int) -> None:
        ship(order)
        if ctx.attempt == 1:
            # The job's own session dies after the effect: its transaction
            # rolls back, and the ledger, written elsewhere, must not.
            ctx.connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    fulfil.enqueue(11)
    drain(app)

    assert calls == [11]
    assert effect_rows(db, app) == [("ship:11", "done", "shipped", 1)]


def test_resolve_done_resumes_job(app: App, db: psycopg.Connection[Any]) -> None:
    calls: list[int] = []

    @idempotent(key="charge:{card}", on_uncertain="fail", uncertain_errors=(TimeoutError,))
    def charge(card: int) -> str:
        calls.append(card)
        if len(calls) == 1:
            raise TimeoutError("no answer")
        return "unreachable"

    results: list[Any] = []

    @app.job(name="pay", retry=NO_WAIT)
    def pay(ctx: JobContext, card: int) -> None:
        results.append(charge(card))

    job_id = pay.enqueue(4)
    drain(app)
    assert [effect.key for effect in list_effects(app, uncertain_only=True)] == ["charge:4"]

    assert resolve_effect(app, "charge:4", done=True, result="ch_4") == job_id
    drain(app)

    assert calls == [4]
    assert results == ["ch_4"]
    assert job_row(db, app, job_id) is None
    assert list_effects(app, uncertain_only=True) == []


def test_resolve_not_done_calls_again(app: App, db: psycopg.Connection[Any]) -> None:
    calls: list[int] = []

    @idempotent(key="charge:{card}", on_uncertain="fail", uncertain_errors=(TimeoutError,))
    def charge(card: int) -> str:
        calls.append(card)
        if len(calls) == 1:
            raise TimeoutError("no answer")
        return "charged"

    @app.job(name="pay", retry=NO_WAIT)
    def pay(ctx: JobContext, card: int) -> None:
        charge(card)

    job_id = pay.enqueue(5)
    drain(app)
    resolve_effect(app, "charge:5", done=False)
    drain(app)

    assert calls == [5, 5]
    assert effect_rows(db, app) == [("charge:5", "done", "charged", 1)]
    assert job_row(db, app, job_id) is None


def test_prune_keeps_keys_of_queued_jobs(app: App, db: psycopg.Connection[Any]) -> None:
    @idempotent(key="note:{n}")
    def note(n: int) -> int:
        return n

    @app.job(name="finished")
    def finished(ctx: JobContext, n: int) -> None:
        note(n)

    @app.job(name="lingering", retry=RetryPolicy(stop_after_attempt(5), wait_fixed(3600)))
    def lingering(ctx: JobContext, n: int) -> None:
        note(n)
        raise RuntimeError("fails after its effect; retried in an hour")

    finished.enqueue(1)
    lingering.enqueue(2)
    drain(app)

    assert prune_effects(app, dt.timedelta(0)) == 1
    assert [row[0] for row in effect_rows(db, app)] == ["note:2"]


def test_non_json_result_recorded_then_raised(app: App, db: psycopg.Connection[Any]) -> None:
    calls: list[int] = []

    @idempotent(key="obj:{n}")
    def make(n: int) -> object:
        calls.append(n)
        return object()

    @app.job(name="objects", retry=NO_WAIT)
    def objects(ctx: JobContext) -> None:
        make(1)

    objects.enqueue()
    drain(app)

    assert calls == [1]
    assert effect_rows(db, app) == [("obj:1", "done", None, 1)]
