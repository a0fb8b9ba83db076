"""The demo: every pattern, two worker processes, and chaos until the queue drains.

Workers are killed with SIGKILL at random moments and restarted, and one
worker's database connection is terminated once. At the end, the fake
provider's records and the patterns' tables show, per pattern, whether
its guarantee held.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from reliable_jobs import App, call

from . import app as patterns_app
from .provider import FakeProvider
from .tables import create_tables

ROOT = Path(__file__).resolve().parent.parent
FULFIL_BASE = 100_000  # fulfil orders get ids of their own, apart from plain charges
DRAIN_TIMEOUT = 120.0


@dataclass(frozen=True)
class PatternResult:
    """One row of the demo's table."""

    pattern: str
    jobs: int
    expected: int
    seen: int
    duplicates: int
    guarantee: str
    held: bool


@dataclass
class Chaos:
    """Crashes injected so far."""

    kills: int = 0
    terminations: int = 0


def run(
    conninfo: str,
    *,
    jobs: int = 300,
    chaos: bool = True,
    keep: bool = False,
    workers: int = 2,
    concurrency: int = 4,
    seed: int | None = None,
    schema: str = patterns_app.DEFAULT_SCHEMA,
    out: Callable[[str], None] = print,
) -> tuple[list[PatternResult], Chaos]:
    """Run the demo on `conninfo` and return the table's rows and the chaos counts.

    `seed` fixes when and which workers are killed; what a kill interrupts
    still depends on timing, so two runs differ in their details.
    """
    rng = random.Random(seed)
    _drop_schema(conninfo, schema)
    app = patterns_app.build_app(conninfo, schema)
    app.migrate()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        create_tables(conn, schema)

    per_pattern = max(1, jobs // 5)
    counts = Chaos()
    try:
        # Latency keeps jobs in flight long enough for the kills to land mid-job.
        with FakeProvider(latency=(0.03, 0.15)) as provider:
            _enqueue(app, per_pattern)
            env = {
                **os.environ,
                "RELIABLE_JOBS_DSN": conninfo,
                "PATTERNS_SCHEMA": schema,
                "PROVIDER_URL": provider.url,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
                ),
            }
            processes = [_start_worker(env, concurrency) for _ in range(workers)]
            try:
                _drain(app, processes, env, concurrency, chaos, rng, counts, out, 5 * per_pattern)
            finally:
                _stop(processes)
            results = _results(app, provider, per_pattern)
    finally:
        app.close()
        if not keep:
            _drop_schema(conninfo, schema)
    return results, counts


def _enqueue(app: App, count: int) -> None:
    jobs = app.registry
    jobs["update_widget_price"].enqueue_many(call(n) for n in range(1, count + 1))
    jobs["charge_order"].enqueue_many(call(n, 100 * n) for n in range(1, count + 1))
    jobs["send_verification_email"].enqueue_many(call(n) for n in range(1, count + 1))
    jobs["deliver_webhook"].enqueue_many(call(n) for n in range(1, count + 1))
    jobs["fulfil_order"].enqueue_many(call(FULFIL_BASE + n, 100 * n) for n in range(1, count + 1))


def _start_worker(env: dict[str, str], concurrency: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "reliable_jobs",
        "worker",
        "--app",
        "patterns.app:build_app",
        "--concurrency",
        str(concurrency),
        "--poll-interval",
        "0.2",
        "--shutdown-grace",
        "5",
    ]
    return subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _drain(
    app: App,
    processes: list[subprocess.Popen[bytes]],
    env: dict[str, str],
    concurrency: int,
    chaos: bool,
    rng: random.Random,
    counts: Chaos,
    out: Callable[[str], None],
    total: int,
) -> None:
    """Wait until no job is pending, killing and restarting workers on the way."""
    started = time.monotonic()
    next_kill = started + rng.uniform(0.2, 0.6)
    last_line = ""
    while True:
        pending = _pending(app)
        line = (
            f"  jobs done {total - pending}/{total}, workers killed {counts.kills}, "
            f"connections terminated {counts.terminations}"
        )
        if line != last_line:
            # Redraw one line on a terminal; elsewhere (a log), one line per change.
            out(f"\r{line}   " if sys.stdout.isatty() else f"{line}\n")
            last_line = line
        if pending == 0:
            break
        if time.monotonic() - started > DRAIN_TIMEOUT:
            out(f"\n  gave up after {DRAIN_TIMEOUT:.0f} s with {pending} jobs pending")
            break
        if chaos and time.monotonic() >= next_kill:
            victim = rng.randrange(len(processes))
            processes[victim].kill()
            processes[victim].wait()
            processes[victim] = _start_worker(env, concurrency)
            counts.kills += 1
            next_kill = time.monotonic() + rng.uniform(0.2, 0.6)
            if counts.terminations == 0 and counts.kills >= 2:
                counts.terminations += _terminate_a_job_connection(app)
        time.sleep(0.1)
    out("\n")


def _pending(app: App) -> int:
    with app.connect("demo") as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.jobs WHERE expired_at IS NULL").format(
                sql.Identifier(app.schema)
            )
        ).fetchone()
    return int(row[0]) if row else 0


def _terminate_a_job_connection(app: App) -> int:
    with app.connect("demo") as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM ("
            " SELECT pid FROM pg_stat_activity WHERE application_name = 'reliable_jobs job'"
            " AND datname = current_database() LIMIT 1) AS one"
        ).fetchone()
    return int(row[0]) if row else 0


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _results(app: App, provider: FakeProvider, count: int) -> list[PatternResult]:
    records = provider.records
    plain_orders = [str(n) for n in range(1, count + 1)]
    fulfil_orders = [str(FULFIL_BASE + n) for n in range(1, count + 1)]
    ids = [str(n) for n in range(1, count + 1)]
    with app.connect("demo") as conn:
        widget_updates = _column(conn, app.schema, "widgets", "id", "updates")
        order_updates = _column(conn, app.schema, "orders", "id", "updates")
        fulfilled = _column(conn, app.schema, "fulfilments", "order_id", "updates")

    def row(
        pattern: str,
        per_key: dict[str, int],
        keys: list[str],
        steps: int,
        guarantee: str,
        extra_ok: bool = True,
    ) -> PatternResult:
        seen = sum(per_key.get(key, 0) for key in keys)
        missing = any(per_key.get(key, 0) == 0 for key in keys)
        duplicates = sum(max(0, per_key.get(key, 0) - 1) for key in keys)
        held = not missing and extra_ok and (guarantee == "at least once" or duplicates == 0)
        return PatternResult(pattern, count, steps * count, seen, duplicates, guarantee, held)

    charges = records.count_by("charges", "order")
    fulfil_steps: dict[str, int] = {}
    for resource in ("reservations", "charges", "shipments"):
        for order, number in records.count_by(resource, "order").items():
            if order in fulfil_orders:
                fulfil_steps[f"{resource}:{order}"] = number
    step_keys = [
        f"{r}:{o}" for r in ("reservations", "charges", "shipments") for o in fulfil_orders
    ]
    return [
        row("widget price (db only)", widget_updates, ids, 1, "exactly once"),
        row(
            "card charge",
            charges,
            plain_orders,
            1,
            "exactly once",
            all(order_updates.get(o) == 1 for o in plain_orders),
        ),
        row("verification email", records.count_by("emails", "user"), ids, 1, "at least once"),
        row("webhook", records.count_by("webhooks", "event"), ids, 1, "exactly once"),
        row(
            "reserve, charge, ship",
            fulfil_steps,
            step_keys,
            3,
            "exactly once",
            all(fulfilled.get(o) == 1 for o in fulfil_orders),
        ),
    ]


def _column(
    conn: psycopg.Connection[Any], schema: str, name: str, key: str, value: str
) -> dict[str, int]:
    rows = conn.execute(
        sql.SQL("SELECT {}::text, {} FROM {}").format(
            sql.Identifier(key), sql.Identifier(value), sql.Identifier(schema, name)
        )
    ).fetchall()
    return {row[0]: row[1] for row in rows}


def _drop_schema(conninfo: str, schema: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def format_table(results: list[PatternResult], counts: Chaos) -> str:
    """Return the demo's result table as text."""
    header = (
        f"{'pattern':<24} {'jobs':>5} {'effects expected':>16} {'effects seen':>12} "
        f"{'duplicates':>10}  {'guarantee':<13} {'held':<4}"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        lines.append(
            f"{result.pattern:<24} {result.jobs:>5} {result.expected:>16} {result.seen:>12} "
            f"{result.duplicates:>10}  {result.guarantee:<13} {'yes' if result.held else 'NO':<4}"
        )
    lines.append(
        f"crashes injected: {counts.kills} workers killed with SIGKILL, "
        f"{counts.terminations} database connection(s) terminated"
    )
    lines.append(
        "effects seen: records at the fake provider; for the db-only pattern, updates "
        "in the database.\nduplicates in an at-least-once row are that pattern's "
        "contract at work, not failures; any in an exactly-once row is a failure."
    )
    return "\n".join(lines)
