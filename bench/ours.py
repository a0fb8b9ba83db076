"""reliable_jobs measured in this process: `python -m bench.ours MODE --dsn DSN ...`.

Prints one JSON object. The driver (bench/__main__.py) starts one process
per measurement.
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from reliable_jobs import App, JobContext, Worker, call, idempotent, transactional_destroy

from .common import latency_summary, print_result

SCHEMA = "bench"


def build_app(dsn: str) -> App:
    app = App(dsn, schema=SCHEMA)

    @app.job(name="noop")
    def noop(ctx: JobContext, n: int) -> None:
        DONE[0] = next(COUNTER)

    @app.job(name="bump")
    @transactional_destroy
    def bump(ctx: JobContext, n: int) -> None:
        ctx.connection.execute(
            "UPDATE bench.counters SET value = value + 1 WHERE id = %s", (n % 1000,)
        )

    @idempotent(key="noop:{n}")
    def effect(n: int) -> None:
        return None

    @app.job(name="with_effect")
    def with_effect(ctx: JobContext, n: int) -> None:
        effect(n)

    @app.job(name="stamp")
    def stamp(ctx: JobContext, enqueued: float) -> None:
        LATENCIES.append(time.perf_counter() - enqueued)

    return app


LATENCIES: list[float] = []
# Noop jobs run in this process, counted without a query: next() on an
# itertools.count is atomic under the GIL, so no increment is lost.
COUNTER = itertools.count(1)
DONE = [0]
KIND_TO_JOB = {"plain": "noop", "transactional": "bump", "idempotent": "with_effect"}


def fresh_schema(dsn: str) -> App:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    app = build_app(dsn)
    app.migrate()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench.counters (id integer PRIMARY KEY, value bigint)")
        conn.execute("INSERT INTO bench.counters SELECT g, 0 FROM generate_series(0, 999) g")
    return app


def fill(dsn: str, job_name: str, count: int) -> None:
    """Insert `count` due jobs straight in SQL: faster than any enqueue, for set-up only."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO bench.jobs (queue, job_name, priority, args) "
            "SELECT 'default', %s, 100, jsonb_build_array(g) FROM generate_series(1, %s) g",
            (job_name, count),
        )
        conn.execute("VACUUM ANALYZE bench.jobs")


def enqueue_single(dsn: str, jobs: int) -> dict[str, Any]:
    app = fresh_schema(dsn)
    noop = app.registry["noop"]
    noop.enqueue(0)  # opens the pool outside the timing
    started = time.perf_counter()
    for n in range(jobs):
        noop.enqueue(n)
    elapsed = time.perf_counter() - started
    app.close()
    return {"jobs_per_second": jobs / elapsed}


def enqueue_bulk(dsn: str, jobs: int, batch: int) -> dict[str, Any]:
    app = fresh_schema(dsn)
    noop = app.registry["noop"]
    noop.enqueue(0)
    started = time.perf_counter()
    for start in range(0, jobs, batch):
        noop.enqueue_many(call(n) for n in range(start, min(jobs, start + batch)))
    elapsed = time.perf_counter() - started
    app.close()
    return {"jobs_per_second": jobs / elapsed}


def drain(dsn: str, kind: str, concurrency: int, jobs: int, waiting: int = 0) -> dict[str, Any]:
    """Time a burst worker from start to empty queue, or to `jobs` done of `waiting`."""
    app = fresh_schema(dsn)
    fill(dsn, KIND_TO_JOB[kind], waiting or jobs)
    worker = Worker(app, concurrency=concurrency, burst=True, install_signal_handlers=False)
    started = time.perf_counter()
    if waiting:
        _stop_after(worker, jobs)
    worker.run()
    elapsed = time.perf_counter() - started
    app.close()
    return {"jobs_per_second": jobs / elapsed}


def _stop_after(worker: Worker, jobs: int) -> None:
    """Stop the worker once it has run `jobs` noop jobs.

    Counting in this process costs nothing; a count(*) over a million rows
    every few milliseconds would slow the very drain it measures.
    """
    start = DONE[0]

    def watch() -> None:
        while DONE[0] - start < jobs:
            time.sleep(0.005)
        worker.stop()

    threading.Thread(target=watch, daemon=True).start()


def drain_at(dsn: str, concurrency: int, jobs: int, start_at: float) -> dict[str, Any]:
    """Drain as one of several processes: wait until `start_at` (epoch), report the end."""
    app = build_app(dsn)
    worker = Worker(app, concurrency=concurrency, burst=True, install_signal_handlers=False)
    time.sleep(max(0.0, start_at - time.time()))
    worker.run()
    app.close()
    return {"ended_at": time.time()}


def latency(dsn: str, jobs: int, spacing: float) -> dict[str, Any]:
    app = fresh_schema(dsn)
    stamp = app.registry["stamp"]
    stamp.enqueue(time.perf_counter())  # opens the pool outside the timing
    worker = Worker(app, concurrency=4, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    time.sleep(1.0)
    LATENCIES.clear()
    for _ in range(jobs):
        stamp.enqueue(time.perf_counter())
        time.sleep(spacing)
    time.sleep(0.5)
    worker.stop()
    thread.join()
    app.close()
    return latency_summary(LATENCIES)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--kind", default="plain")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--waiting", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=0.02)
    parser.add_argument("--start-at", type=float, default=0.0)
    options = parser.parse_args()

    if options.mode == "enqueue_single":
        result = enqueue_single(options.dsn, options.jobs)
    elif options.mode == "enqueue_bulk":
        result = enqueue_bulk(options.dsn, options.jobs, options.batch)
    elif options.mode == "drain":
        result = drain(
            options.dsn, options.kind, options.concurrency, options.jobs, options.waiting
        )
    elif options.mode == "drain_at":
        result = drain_at(options.dsn, options.concurrency, options.jobs, options.start_at)
    elif options.mode == "latency":
        result = latency(options.dsn, options.jobs, options.spacing)
    elif options.mode == "prepare":
        fresh_schema(options.dsn)
        fill(options.dsn, "noop", options.jobs)
        result = {}
    else:
        raise SystemExit(f"unknown mode {options.mode!r}")
    print_result(result)


if __name__ == "__main__":
    main()
