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

from reliable_jobs import App, JobContext, RetryPolicy


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

    return app
