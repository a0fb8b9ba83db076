"""Crash-replay properties of the toolkit, checked over generated crash schedules."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from psycopg import sql

from reliable_jobs import (
    App,
    JobContext,
    RetryPolicy,
    current_effect_key,
    idempotent,
    transactional_destroy,
)
from reliable_jobs.testing import (
    Crash,
    EffectRecorder,
    ReplayViolation,
    crash_schedules,
    replay,
)
from tests.helpers import scalar

pytestmark = pytest.mark.slow

FAST_RETRY = RetryPolicy()  # backoff is skipped by the replay
EFFECT_POINTS = [
    "after_lock",
    "before_claim",
    "after_claim",
    "before_call",
    "after_call",
    "before_record",
    "after_record",
    "before_destroy",
    "after_destroy",
]
TRANSACTION_POINTS = ["after_lock", "before_commit", "after_commit", "after_destroy"]
# The points a plain job reaches: the worker deletes its row.
PLAIN_POINTS = ["after_lock", "before_destroy", "after_destroy"]
# The tests that expect a violation search the same examples on every run,
# over only the points their job reaches, so that finding it never
# depends on the random seed.
NEGATIVE = settings(derandomize=True, max_examples=100, database=None)


@pytest.fixture
def recorder(app: App) -> Iterator[EffectRecorder]:
    recorder = EffectRecorder(app)
    yield recorder
    recorder.close()


def unique_ids() -> Iterator[int]:
    return itertools.count(1)


def test_transactional_writes_exactly_once(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="price", retry=FAST_RETRY)
    @transactional_destroy
    def price(ctx: JobContext, widget: int) -> None:
        ctx.connection.execute(
            sql.SQL("INSERT INTO {}.runs (job_id, note) VALUES (%s, %s)").format(
                sql.Identifier(app.schema)
            ),
            (ctx.job_id, f"widget {widget}"),
        )

    ids = unique_ids()

    @given(crash_schedules(TRANSACTION_POINTS))
    def prop(schedule: list[Crash]) -> None:
        widget = next(ids)
        report = replay(app, price, widget, crashes=schedule)
        report.check_clean()
        writes = scalar(
            db, app.schema, "SELECT count(*) FROM {}.runs WHERE note = %s", f"widget {widget}"
        )
        if writes != 1:
            raise report.violation(f"the write was applied {writes} times, not once")

    prop()


@pytest.mark.parametrize("with_check", [True, False], ids=["check", "provider_key"])
def test_charge_exactly_once(app: App, recorder: EffectRecorder, with_check: bool) -> None:
    def found(card: int) -> str | None:
        return f"ch_{card}" if recorder.count(f"accepted:charge:{card}") else None

    @idempotent(key="charge:{card}", check=found if with_check else None)
    def charge(card: int) -> str:
        # The provider drops a request whose idempotency key it has seen.
        key = current_effect_key()
        recorder.record(f"call:{key}")
        if not recorder.count(f"accepted:{key}"):
            recorder.record(f"accepted:{key}")
        return f"ch_{card}"

    @app.job(name="pay", retry=FAST_RETRY)
    def pay(ctx: JobContext, card: int) -> None:
        charge(card)

    cards = unique_ids()

    @given(crash_schedules(EFFECT_POINTS))
    def prop(schedule: list[Crash]) -> None:
        card = next(cards)
        report = replay(app, pay, card, crashes=schedule)
        report.check_clean()
        accepted = recorder.count(f"accepted:charge:{card}")
        if report.final_state != "done" or accepted != 1:
            raise report.violation(f"the provider accepted {accepted} charges, not 1")

    prop()


@pytest.mark.parametrize("policy", ["retry", "skip", "fail"])
def test_uncertain_policies(app: App, recorder: EffectRecorder, policy: Any) -> None:
    @idempotent(key="email:{user}", on_uncertain=policy)
    def send(user: int) -> None:
        recorder.record(f"email:{user}")

    @app.job(name="mail", retry=FAST_RETRY)
    def mail(ctx: JobContext, user: int) -> None:
        send(user)

    users = unique_ids()

    @given(crash_schedules(EFFECT_POINTS))
    def prop(schedule: list[Crash]) -> None:
        user = next(users)
        report = replay(app, mail, user, crashes=schedule)
        report.check_clean()
        sent = recorder.count(f"email:{user}")
        if policy == "retry" and (sent < 1 or report.final_state != "done"):
            raise report.violation(f"retry must send at least once; sent {sent}")
        if policy == "skip" and (sent > 1 or report.final_state != "done"):
            raise report.violation(f"skip must send at most once; sent {sent}")
        if policy == "fail":
            held = report.final_state == "failed"
            if (
                sent > 1
                or (not held and sent != 1)
                or (held and "ledger resolve" not in (report.last_error or ""))
            ):
                raise report.violation(f"fail must send at most once or hold; sent {sent}")

    prop()


# The harness must catch broken jobs: each of these tests expects a violation.


def expect_violation(prop: Any) -> str:
    with pytest.raises(ReplayViolation) as raised:
        prop()
    notes = "\n".join(getattr(raised.value, "__notes__", []))
    return f"{raised.value}\n{notes}"


def test_catches_charge_without_ledger(app: App, recorder: EffectRecorder) -> None:
    @app.job(name="naive_pay", retry=FAST_RETRY)
    def naive_pay(ctx: JobContext, card: int) -> None:
        recorder.record(f"charge:{card}")

    cards = unique_ids()

    @NEGATIVE
    @given(crash_schedules(PLAIN_POINTS, max_nth=1))
    def prop(schedule: list[Crash]) -> None:
        card = next(cards)
        report = replay(app, naive_pay, card, crashes=schedule)
        if recorder.count(f"charge:{card}") != 1:
            raise report.violation("charged more than once")

    message = expect_violation(prop)
    assert "Crash('before_destroy')" in message
    assert "charged more than once" in message


def test_catches_destroy_after_commit(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="split", retry=FAST_RETRY)
    def split(ctx: JobContext, widget: int) -> None:
        with ctx.transaction():
            ctx.connection.execute(
                sql.SQL("INSERT INTO {}.runs (note) VALUES (%s)").format(
                    sql.Identifier(app.schema)
                ),
                (f"split {widget}",),
            )
        ctx.destroy()  # a second transaction: a crash in between repeats the write

    widgets = unique_ids()

    @NEGATIVE
    @given(crash_schedules(TRANSACTION_POINTS, max_nth=1))
    def prop(schedule: list[Crash]) -> None:
        widget = next(widgets)
        report = replay(app, split, widget, crashes=schedule)
        writes = scalar(
            db, app.schema, "SELECT count(*) FROM {}.runs WHERE note = %s", f"split {widget}"
        )
        if writes != 1:
            raise report.violation(f"the write was applied {writes} times")

    message = expect_violation(prop)
    assert "Crash('after_commit')" in message


def test_catches_ledger_inside_transaction(
    app: App, recorder: EffectRecorder, db: psycopg.Connection[Any]
) -> None:
    db.execute(
        sql.SQL("CREATE TABLE {}.my_ledger (key text PRIMARY KEY)").format(
            sql.Identifier(app.schema)
        )
    )

    @app.job(name="inner_ledger", retry=FAST_RETRY)
    @transactional_destroy
    def inner_ledger(ctx: JobContext, card: int) -> None:
        key = f"charge:{card}"
        seen = ctx.connection.execute(
            sql.SQL("SELECT 1 FROM {}.my_ledger WHERE key = %s").format(sql.Identifier(app.schema)),
            (key,),
        ).fetchone()
        if seen is None:
            recorder.record(key)
            # Wrong: this record rolls back with the job's transaction.
            ctx.connection.execute(
                sql.SQL("INSERT INTO {}.my_ledger (key) VALUES (%s)").format(
                    sql.Identifier(app.schema)
                ),
                (key,),
            )

    cards = unique_ids()

    @NEGATIVE
    @given(crash_schedules(TRANSACTION_POINTS, max_nth=1))
    def prop(schedule: list[Crash]) -> None:
        card = next(cards)
        report = replay(app, inner_ledger, card, crashes=schedule)
        if recorder.count(f"charge:{card}") != 1:
            raise report.violation("charged more than once")

    message = expect_violation(prop)
    assert "Crash('before_commit')" in message


def test_queue_state_machine(app: App, recorder: EffectRecorder, dsn: str) -> None:
    """Enqueue, run, crash and restart in any order: each card is charged once."""
    from hypothesis import strategies as st
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        invariant,
        rule,
        run_state_machine_as_test,
    )

    from conftest import no_advisory_locks_soon
    from reliable_jobs.testing import make_all_due, run_once

    def found(card: int) -> str | None:
        return f"ch_{card}" if recorder.count(f"charge:{card}") else None

    @idempotent(key="charge:{card}", check=found)
    def charge(card: int) -> str:
        recorder.record(f"charge:{card}")
        return f"ch_{card}"

    @app.job(name="checkout", retry=FAST_RETRY)
    @transactional_destroy
    def checkout(ctx: JobContext, card: int) -> None:
        charge(card)
        ctx.connection.execute(
            sql.SQL("INSERT INTO {}.runs (note) VALUES (%s)").format(sql.Identifier(app.schema)),
            (f"order {card}",),
        )

    rounds = itertools.count(1)

    class Queue(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            # Cards are unique per example, so examples do not share keys.
            self.base = next(rounds) * 1000
            # Jobs per card: each writes its own order; all share one charge.
            self.cards: dict[int, int] = {}

        @rule(offset=st.integers(0, 3))
        def enqueue(self, offset: int) -> None:
            card = self.base + offset
            self.cards[card] = self.cards.get(card, 0) + 1
            checkout.enqueue(card)

        @rule(point=st.sampled_from(EFFECT_POINTS + TRANSACTION_POINTS))
        def crash_worker(self, point: str) -> None:
            make_all_due(app)
            run_once(app, Crash(point))

        @rule()
        def restart_worker(self) -> None:
            make_all_due(app)
            run_once(app)

        @invariant()
        def charged_at_most_once(self) -> None:
            for card in self.cards:
                assert recorder.count(f"charge:{card}") <= 1, f"card {card} charged twice"

        @invariant()
        def nothing_locked_between_runs(self) -> None:
            assert no_advisory_locks_soon(dsn, app)

        def teardown(self) -> None:
            for _ in range(5):
                make_all_due(app)
                run_once(app)
            with app.connect() as conn:
                for card, jobs in self.cards.items():
                    orders = conn.execute(
                        sql.SQL("SELECT count(*) FROM {}.runs WHERE note = %s").format(
                            sql.Identifier(app.schema)
                        ),
                        (f"order {card}",),
                    ).fetchone()
                    assert orders == (jobs,), f"card {card}: {orders} orders for {jobs} jobs"
                    assert recorder.count(f"charge:{card}") == 1, f"card {card} not charged once"
                left = conn.execute(
                    sql.SQL("SELECT count(*) FROM {}.jobs").format(sql.Identifier(app.schema))
                ).fetchone()
                assert left == (0,), "jobs left in the queue"

    from hypothesis import settings

    examples = settings().max_examples
    run_state_machine_as_test(
        Queue, settings=settings(max_examples=2 * examples, stateful_step_count=10)
    )


def test_real_processes_charge_once(
    app: App, recorder: EffectRecorder, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same property with worker processes killed by SIGKILL at the chosen points."""
    from hypothesis import settings

    from tests.jobs_app import build_app

    monkeypatch.setenv("RJ_TEST_DSN", dsn)
    monkeypatch.setenv("RJ_TEST_SCHEMA", app.schema)
    monkeypatch.setenv("RJ_TEST_EFFECTS", "/dev/null")
    jobs_app = build_app()
    cards = unique_ids()

    @settings(max_examples=max(3, settings().max_examples // 4))
    @given(crash_schedules(EFFECT_POINTS, max_crashes=2))
    def prop(schedule: list[Crash]) -> None:
        card = next(cards)
        report = replay(
            jobs_app,
            jobs_app.registry["replay_charge"],
            card,
            crashes=schedule,
            mode="process",
            app_spec="tests.jobs_app:build_app",
        )
        report.check_clean()
        if any(run.crashed for run in report.runs) != bool(report.crash_points_hit):
            raise report.violation("crash bookkeeping disagrees with the runs")
        charged = recorder.count(f"charge:{card}")
        if report.final_state != "done" or charged != 1:
            raise report.violation(f"charged {charged} times, not once")

    prop()
    jobs_app.close()
