"""pgqueuer and procrastinate, each through its own documented API.

`python -m bench.peers SYSTEM MODE --dsn DSN ...` prints one JSON object.
Each system gets a fresh database of its own from the driver, because both
install their tables in the public schema. Neither is a dependency of
reliable_jobs: the bench's own environment installs them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

from .common import latency_summary, print_result

LATENCIES: list[float] = []


async def pgqueuer_run(mode: str, dsn: str, jobs: int, batch: int, spacing: float) -> Any:
    import psycopg
    from pgqueuer import Queries, QueueManager
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.models import Job
    from pgqueuer.types import QueueExecutionMode

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    queries = Queries(PsycopgDriver(conn))
    await queries.install()

    if mode == "enqueue_single":
        started = time.perf_counter()
        for _ in range(jobs):
            await queries.enqueue("noop", None)
        return {"jobs_per_second": jobs / (time.perf_counter() - started)}

    if mode == "enqueue_bulk":
        started = time.perf_counter()
        for start in range(0, jobs, 1000):
            size = min(1000, jobs - start)
            await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
        return {"jobs_per_second": jobs / (time.perf_counter() - started)}

    manager = QueueManager(queries)

    @manager.entrypoint("noop")
    async def noop(job: Job) -> None:
        if job.payload:
            LATENCIES.append(time.perf_counter() - float(job.payload.decode()))

    if mode == "drain":
        for start in range(0, jobs, 1000):
            size = min(1000, jobs - start)
            await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
        started = time.perf_counter()
        await manager.run(batch_size=batch, mode=QueueExecutionMode.drain)
        return {"jobs_per_second": jobs / (time.perf_counter() - started)}

    # latency: a second connection enqueues while the manager waits.
    producer = Queries(PsycopgDriver(await psycopg.AsyncConnection.connect(dsn, autocommit=True)))
    runner = asyncio.create_task(manager.run(batch_size=batch))
    await asyncio.sleep(1.0)
    for _ in range(jobs):
        await producer.enqueue("noop", str(time.perf_counter()).encode())
        await asyncio.sleep(spacing)
    await asyncio.sleep(0.5)
    manager.shutdown.set()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(runner, 10)
    return _latency_result()


async def procrastinate_run(
    mode: str, dsn: str, jobs: int, concurrency: int, spacing: float
) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop")
    async def noop(sent: float = 0.0) -> None:
        if sent:
            LATENCIES.append(time.perf_counter() - sent)

    async with app.open_async():
        await app.schema_manager.apply_schema_async()

        if mode == "enqueue_single":
            started = time.perf_counter()
            for _ in range(jobs):
                await noop.defer_async()
            return {"jobs_per_second": jobs / (time.perf_counter() - started)}

        if mode == "enqueue_bulk":
            started = time.perf_counter()
            for start in range(0, jobs, 1000):
                await noop.batch_defer_async(*[{} for _ in range(min(1000, jobs - start))])
            return {"jobs_per_second": jobs / (time.perf_counter() - started)}

        if mode == "drain":
            for start in range(0, jobs, 1000):
                await noop.batch_defer_async(*[{} for _ in range(min(1000, jobs - start))])
            started = time.perf_counter()
            await app.run_worker_async(concurrency=concurrency, wait=False)
            return {"jobs_per_second": jobs / (time.perf_counter() - started)}

        worker = asyncio.create_task(app.run_worker_async(concurrency=concurrency))
        await asyncio.sleep(1.0)
        for _ in range(jobs):
            await noop.defer_async(sent=time.perf_counter())
            await asyncio.sleep(spacing)
        await asyncio.sleep(0.5)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(worker, 10)
        return _latency_result()


def _latency_result() -> dict[str, Any]:
    return latency_summary(LATENCIES)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["pgqueuer", "procrastinate"])
    parser.add_argument("mode", choices=["enqueue_single", "enqueue_bulk", "drain", "latency"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--spacing", type=float, default=0.02)
    options = parser.parse_args()

    if options.system == "pgqueuer":
        coroutine = pgqueuer_run(
            options.mode, options.dsn, options.jobs, options.batch, options.spacing
        )
    else:
        coroutine = procrastinate_run(
            options.mode, options.dsn, options.jobs, options.concurrency, options.spacing
        )
    print_result(asyncio.run(coroutine))


if __name__ == "__main__":
    main()
