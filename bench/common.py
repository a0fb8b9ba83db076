"""Shared helpers: databases per system, timing, statistics, subprocess runs."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Stat:
    """Median and range of repeated measurements of one quantity."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values))


def database_dsn(admin_dsn: str, name: str) -> str:
    """Return the address of database `name` on the server of `admin_dsn`."""
    return pg_conninfo.make_conninfo(admin_dsn, dbname=name)


def fresh_database(admin_dsn: str, name: str) -> str:
    """Drop and create database `name`; return its address."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_dsn(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def measure_in_subprocess(module: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """Run `python -m bench.<module> ARGS`, which prints one JSON object; return it.

    Each measurement gets a fresh interpreter, so no state, thread or cache
    of one measurement affects the next.
    """
    completed = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"bench.{module} {' '.join(args)} failed ({completed.returncode}):\n"
            f"{completed.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def print_result(result: dict[str, Any]) -> None:
    """Print a measurement's result as the last line of stdout, for measure_in_subprocess."""
    print(json.dumps(result), flush=True)


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """Return p50, p95 and p99 in milliseconds of latencies given in seconds."""
    values = [value * 1000 for value in seconds]
    return {
        "p50_ms": percentile(values, 0.50),
        "p95_ms": percentile(values, 0.95),
        "p99_ms": percentile(values, 0.99),
        "count": len(values),
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]
