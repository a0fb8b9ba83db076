"""The raw PostgreSQL limits, measured with pgbench on an equivalent jobs table."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import psycopg

SETUP = """
DROP TABLE IF EXISTS jobs;
CREATE TABLE jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL DEFAULT 'default',
    priority smallint NOT NULL DEFAULT 100,
    run_at timestamptz NOT NULL DEFAULT now(),
    args jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX jobs_ready_idx ON jobs (priority, run_at, id);
CREATE OR REPLACE FUNCTION lock_one() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE candidate bigint;
BEGIN
    FOR candidate IN SELECT id FROM jobs ORDER BY priority, run_at, id LOOP
        IF pg_try_advisory_lock(candidate) THEN
            IF EXISTS (SELECT 1 FROM jobs WHERE id = candidate) THEN
                RETURN candidate;
            END IF;
            PERFORM pg_advisory_unlock(candidate);
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
"""

SCRIPTS = {
    # One INSERT per transaction.
    "insert": "INSERT INTO jobs (args) VALUES ('[]');\n",
    # Lock one job with SKIP LOCKED and delete it, one per transaction.
    "lock_delete": (
        "DELETE FROM jobs WHERE id = (SELECT id FROM jobs ORDER BY priority, run_at, id "
        "FOR UPDATE SKIP LOCKED LIMIT 1);\n"
    ),
    # The same, ten jobs per transaction.
    "lock_delete_10": (
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs ORDER BY priority, run_at, id "
        "FOR UPDATE SKIP LOCKED LIMIT 10);\n"
    ),
    # Que's way: a session advisory lock, the delete committed, then the unlock.
    "advisory": (
        "SELECT lock_one() AS id \\gset\n"
        "DELETE FROM jobs WHERE id = :id;\n"
        "SELECT pg_advisory_unlock(:id);\n"
    ),
}

JOBS_PER_TRANSACTION = {"insert": 1, "lock_delete": 1, "lock_delete_10": 10, "advisory": 1}


def run_pgbench(dsn: str, script: str, clients: int, seconds: float, prefill: int) -> float:
    """Return jobs per second for `script` at `clients` clients over `seconds`."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SETUP)
        if prefill:
            conn.execute(
                "INSERT INTO jobs (args) SELECT '[]' FROM generate_series(1, %s)", (prefill,)
            )
        conn.execute("VACUUM ANALYZE jobs")

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"{script}.sql"
        path.write_text(SCRIPTS[script])
        completed = subprocess.run(
            [
                "pgbench",
                "-n",
                "-c",
                str(clients),
                "-j",
                str(min(clients, 2)),
                "-T",
                str(int(seconds)),
                "-f",
                str(path),
                dsn,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", completed.stdout)
    if match is None:
        raise RuntimeError(f"no tps in pgbench output:\n{completed.stdout}\n{completed.stderr}")
    return float(match.group(1)) * JOBS_PER_TRANSACTION[script]
