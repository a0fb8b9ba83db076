"""Run every benchmark and write docs/benchmarks.md: `python -m bench --dsn DSN`.

The DSN names a server where the bench may create and drop the databases
bench_raw, bench_rj, bench_pgq and bench_pro. pgbench must be on PATH, and
pgqueuer and procrastinate importable for the peers (pip install -r
bench/requirements.txt); a missing peer is reported and skipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from .common import ROOT, Stat, drop_database, fresh_database, measure_in_subprocess
from .raw import run_pgbench
from .report import write_report

Results = dict[str, Any]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("RELIABLE_JOBS_DSN"),
        help="admin address of the server (default: RELIABLE_JOBS_DSN)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (default 3)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and one repeat: checks that the bench runs, measures nothing",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "benchmarks.md",
        help="markdown file to write (default docs/benchmarks.md)",
    )
    options = parser.parse_args()
    if not options.dsn:
        raise SystemExit("error: pass --dsn or set RELIABLE_JOBS_DSN (the bench needs a server)")

    sizes = Sizes.quick() if options.quick else Sizes()
    repeats = 1 if options.quick else options.repeats
    started = time.monotonic()
    results: Results = {
        "machine": machine(options.dsn),
        "sizes": sizes.__dict__,
        "repeats": repeats,
    }
    bench = Bench(options.dsn, sizes, repeats, results)
    for section in (bench.raw, bench.enqueue, bench.drain, bench.latency, bench.scale, bench.peers):
        section()
    for database in ("bench_rj", "bench_pgq", "bench_pro"):
        drop_database(options.dsn, database)
    results["seconds"] = time.monotonic() - started
    write_report(results, options.out)
    print(f"wrote {options.out} in {results['seconds']:.0f} s")


class Sizes:
    """How much work each measurement does."""

    def __init__(self) -> None:
        self.enqueue_single = 3000
        self.enqueue_bulk = 50_000
        self.drain = 10_000
        self.drain_slow = 3000  # procrastinate drains about 20 times slower
        self.latency_jobs = 200
        self.pgbench_seconds = 3
        self.scale_waiting = [10_000, 100_000, 1_000_000]
        self.scale_measured = 5000
        self.clients = [1, 2, 4, 8]
        self.concurrency = [1, 4, 8, 16]

    @classmethod
    def quick(cls) -> Sizes:
        sizes = cls()
        sizes.enqueue_single, sizes.enqueue_bulk, sizes.drain, sizes.drain_slow = 50, 2000, 200, 50
        sizes.latency_jobs, sizes.pgbench_seconds = 10, 1
        sizes.scale_waiting, sizes.scale_measured = [1000], 200
        sizes.clients, sizes.concurrency = [1], [4]
        return sizes


class Bench:
    def __init__(self, dsn: str, sizes: Sizes, repeats: int, results: Results) -> None:
        self.dsn = dsn
        self.sizes = sizes
        self.repeats = repeats
        self.results = results

    def repeat(self, label: str, measure: Callable[[], dict[str, Any]], key: str) -> Stat:
        values = []
        for _ in range(self.repeats):
            values.append(float(measure()[key]))
        stat = Stat.of(values)
        print(f"{label}: {stat.median:,.0f} ({stat.low:,.0f}-{stat.high:,.0f})", flush=True)
        return stat

    def ours(self, *args: str) -> dict[str, Any]:
        dsn = fresh_database(self.dsn, "bench_rj")
        return measure_in_subprocess("ours", *args, "--dsn", dsn)

    def raw(self) -> None:
        if shutil.which("pgbench") is None:
            print("pgbench is not on PATH; raw limits skipped", flush=True)
            self.results["raw"] = {}
            return
        dsn = fresh_database(self.dsn, "bench_raw")
        raw: Results = {}
        for script in ("insert", "lock_delete", "lock_delete_10", "advisory"):
            for clients in self.sizes.clients:
                prefill = 0 if script == "insert" else 300_000
                raw[f"{script}@{clients}"] = self.repeat(
                    f"raw {script} clients={clients}",
                    partial(_pgbench, dsn, script, clients, self.sizes.pgbench_seconds, prefill),
                    "v",
                )
        drop_database(self.dsn, "bench_raw")
        self.results["raw"] = raw

    def enqueue(self) -> None:
        self.results["enqueue"] = {
            "single": self.repeat(
                "ours enqueue single",
                lambda: self.ours("enqueue_single", "--jobs", str(self.sizes.enqueue_single)),
                "jobs_per_second",
            ),
            "bulk": self.repeat(
                "ours enqueue bulk",
                lambda: self.ours("enqueue_bulk", "--jobs", str(self.sizes.enqueue_bulk)),
                "jobs_per_second",
            ),
        }

    def drain(self) -> None:
        drain: Results = {}
        for kind in ("plain", "transactional", "idempotent"):
            for concurrency in self.sizes.concurrency:
                drain[f"{kind}@{concurrency}"] = self.repeat(
                    f"ours drain {kind} concurrency={concurrency}",
                    partial(
                        self.ours,
                        "drain",
                        "--kind",
                        kind,
                        "--concurrency",
                        str(concurrency),
                        "--jobs",
                        str(self.sizes.drain),
                    ),
                    "jobs_per_second",
                )
        drain["two_processes@8"] = self.repeat(
            "ours drain plain, 2 processes x 8", lambda: self.two_processes(8), "jobs_per_second"
        )
        self.results["drain"] = drain

    def two_processes(self, concurrency: int) -> dict[str, Any]:
        dsn = fresh_database(self.dsn, "bench_rj")
        measure_in_subprocess("ours", "prepare", "--dsn", dsn, "--jobs", str(2 * self.sizes.drain))
        start_at = time.time() + 2.0
        command = [
            sys.executable,
            "-m",
            "bench.ours",
            "drain_at",
            "--dsn",
            dsn,
            "--concurrency",
            str(concurrency),
            "--start-at",
            str(start_at),
        ]
        processes = [
            subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)
        ]
        ends = []
        for process in processes:
            out, _ = process.communicate(timeout=600)
            ends.append(float(out.strip().splitlines()[-1].split(":")[1].strip(" }")))
        return {"jobs_per_second": 2 * self.sizes.drain / (max(ends) - start_at)}

    def latency(self) -> None:
        runs = [
            self.ours("latency", "--jobs", str(self.sizes.latency_jobs))
            for _ in range(self.repeats)
        ]
        self.results["latency"] = {
            key: Stat.of([run[key] for run in runs]) for key in ("p50_ms", "p95_ms", "p99_ms")
        }
        latency = self.results["latency"]
        print(
            f"ours latency p50/p99: {latency['p50_ms'].median:.1f} / "
            f"{latency['p99_ms'].median:.1f} ms",
            flush=True,
        )

    def scale(self) -> None:
        scale: Results = {}
        for waiting in self.sizes.scale_waiting:
            scale[str(waiting)] = self.repeat(
                f"ours drain with {waiting:,} waiting",
                partial(
                    self.ours,
                    "drain",
                    "--concurrency",
                    "8",
                    "--jobs",
                    str(self.sizes.scale_measured),
                    "--waiting",
                    str(waiting),
                ),
                "jobs_per_second",
            )
        self.results["scale"] = scale

    def peers(self) -> None:
        peers: Results = {}
        for system, database in (("pgqueuer", "bench_pgq"), ("procrastinate", "bench_pro")):
            if importlib.util.find_spec(system) is None:
                peers[system] = "not installed"
                print(f"{system} is not installed; skipped", flush=True)
                continue
            peers[system] = self.peer(system, database)
        self.results["peers"] = peers

    def peer(self, system: str, database: str) -> Results:
        def run(*args: str) -> dict[str, Any]:
            dsn = fresh_database(self.dsn, database)
            return measure_in_subprocess("peers", system, *args, "--dsn", dsn)

        drain_jobs = str(self.sizes.drain if system == "pgqueuer" else self.sizes.drain_slow)
        # Default and best settings: pgqueuer's batch size, procrastinate's concurrency.
        settings = {
            "pgqueuer": [("--batch", "10"), ("--batch", "64"), ("--batch", "256")],
            "procrastinate": [("--concurrency", "1"), ("--concurrency", "16")],
        }[system]
        result: Results = {
            "single": self.repeat(
                f"{system} enqueue single",
                lambda: run("enqueue_single", "--jobs", str(self.sizes.enqueue_single)),
                "jobs_per_second",
            ),
            "bulk": self.repeat(
                f"{system} enqueue bulk",
                lambda: run("enqueue_bulk", "--jobs", str(self.sizes.enqueue_bulk)),
                "jobs_per_second",
            ),
        }
        for option, value in settings:
            result[f"drain {option[2:]}={value}"] = self.repeat(
                f"{system} drain {option}={value}",
                partial(run, "drain", "--jobs", drain_jobs, option, value),
                "jobs_per_second",
            )
        runs = [
            run("latency", "--jobs", str(self.sizes.latency_jobs), *settings[0])
            for _ in range(self.repeats)
        ]
        result["latency"] = {
            key: Stat.of([r[key] for r in runs]) for key in ("p50_ms", "p95_ms", "p99_ms")
        }
        return result


def _pgbench(dsn: str, script: str, clients: int, seconds: float, prefill: int) -> dict[str, Any]:
    return {"v": run_pgbench(dsn, script, clients, seconds, prefill)}


def machine(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT version(), current_setting('synchronous_commit')").fetchone()
    version, synchronous_commit = row if row else ("?", "?")
    return {
        "date": dt.date.today().isoformat(),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgres": str(version).split(" on ")[0],
        "synchronous_commit": str(synchronous_commit),
    }


if __name__ == "__main__":
    main()
