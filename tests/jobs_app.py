"""Jobs for tests that run workers in separate processes.

Load with `reliable-jobs worker --app tests.jobs_app:build_app`; the
database and schema come from RJ_TEST_DSN and RJ_TEST_SCHEMA. Every job
records each run in the schema's `runs` table, committed at once and
outside any transaction of the job, so a crash cannot erase the record.
"""

from __future__ import annotations

import os
import signal
import time

from psycopg import sql
from tenacity import stop_after_attempt, wait_fixed

from reliable_jobs import App, JobContext, RetryPolicy, idempotent
from reliable_jobs.idempotency import OnUncertain

NO_WAIT = RetryPolicy(stop_after_attempt(5), wait_fixed(0))


def record_run(ctx: JobContext, note: str) -> None:
    """Insert a run row, noting this worker process's pid."""
    note = f"{note} pid={os.getpid()}"
    statement = sql.SQL("INSERT INTO {}.runs (job_id, attempt, note) VALUES (%s, %s, %s)")
    schema = sql.Identifier(os.environ["RJ_TEST_SCHEMA"])
    # ctx.connection is in autocommit mode outside transaction(), so this
    # insert commits on its own.
    ctx.connection.execute(statement.format(schema), (ctx.job_id, ctx.attempt, note))


def build_app() -> App:
    app = App(os.environ["RJ_TEST_DSN"], schema=os.environ["RJ_TEST_SCHEMA"])

    @app.job(name="record")
    def record(ctx: JobContext, note: str = "") -> None:
        record_run(ctx, note)

    @app.job(name="block")
    def block(ctx: JobContext, seconds: float) -> None:
        """Sleep on the first attempt only, so a rescued job finishes at once."""
        record_run(ctx, "start")
        if ctx.attempt == 1:
            time.sleep(seconds)
        record_run(ctx, "end")

    @app.job(name="kill_self", retry=RetryPolicy(stop_after_attempt(3), wait_fixed(0)))
    def kill_self(ctx: JobContext) -> None:
        record_run(ctx, "start")
        os.kill(os.getpid(), signal.SIGKILL)

    @app.job(name="write_then_block")
    def write_then_block(ctx: JobContext, seconds: float) -> None:
        record_run(ctx, "start")
        with ctx.transaction():
            statement = sql.SQL("INSERT INTO {}.runs (job_id, attempt, note) VALUES (%s, %s, %s)")
            ctx.connection.execute(
                statement.format(sql.Identifier(app.schema)), (ctx.job_id, ctx.attempt, "in tx")
            )
            time.sleep(seconds)
            ctx.destroy()

    register_charges(app)
    register_replay_charge(app)
    return app


def register_replay_charge(app: App) -> None:
    """A charge with a check against an EffectRecorder, for process-mode replays."""
    from reliable_jobs.testing import EffectRecorder

    recorder = EffectRecorder(app)

    def found(card: int) -> str | None:
        return f"ch_{card}" if recorder.count(f"charge:{card}") else None

    @idempotent(key="charge:{card}", check=found)
    def charge(card: int) -> str:
        recorder.record(f"charge:{card}")
        return f"ch_{card}"

    @app.job(name="replay_charge", retry=NO_WAIT)
    def replay_charge(ctx: JobContext, card: int) -> None:
        charge(card)


def external_call(line: str) -> None:
    """Append a line to the effects file: the external system's own record.

    The file is outside every database transaction, so a crash or a
    rollback cannot erase a call once it is made.
    """
    with open(os.environ["RJ_TEST_EFFECTS"], "a", encoding="utf-8") as effects:
        effects.write(line + "\n")
        effects.flush()
        os.fsync(effects.fileno())


def external_calls(line: str) -> int:
    """Count the calls recorded for `line` in the effects file."""
    try:
        with open(os.environ["RJ_TEST_EFFECTS"], encoding="utf-8") as effects:
            return sum(1 for recorded in effects if recorded.rstrip("\n") == line)
    except FileNotFoundError:
        return 0


def register_charges(app: App) -> None:
    """Register one charge job per on_uncertain policy, with and without a check.

    On the job's first attempt, the effect kills its worker right after the
    external call and before the ledger records it as done.
    """

    def found_by_provider(card: int) -> str | None:
        return f"ch_{card}" if external_calls(f"charge:{card}") else None

    for policy in ("retry", "skip", "fail"):
        for with_check in (False, True):
            name = f"charge_{policy}_{'check' if with_check else 'nocheck'}"
            register_charge(app, name, policy, found_by_provider if with_check else None)

    @idempotent(key="charge:{card}")
    def slow_charge(card: int) -> str:
        external_call(f"charge:{card}")
        time.sleep(0.5)
        return f"ch_{card}"

    @app.job(name="slow_charge", retry=NO_WAIT)
    def slow_charge_job(ctx: JobContext, card: int) -> None:
        slow_charge(card)


def register_charge(app: App, name: str, policy: OnUncertain, check: object) -> None:
    @idempotent(key="charge:{card}", check=check, on_uncertain=policy)  # type: ignore[arg-type]
    def charge(card: int) -> str:
        external_call(f"charge:{card}")
        current = JobContext.current()
        if current is not None and current.attempt == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return f"ch_{card}"

    @app.job(name=name, retry=NO_WAIT)
    def charge_job(ctx: JobContext, card: int) -> None:
        charge(card)
