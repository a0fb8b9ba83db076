"""@idempotent under real crashes: workers SIGKILLed between the call and the record."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reliable_jobs import App, call
from reliable_jobs.cli import main
from tests.helpers import fetch, scalar, start_worker_process, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def effects_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.log"
    monkeypatch.setenv("RJ_TEST_EFFECTS", str(path))
    return path


@pytest.fixture
def jobs_app(app: App, dsn: str, monkeypatch: pytest.MonkeyPatch, effects_file: Path) -> App:
    monkeypatch.setenv("RJ_TEST_DSN", dsn)
    monkeypatch.setenv("RJ_TEST_SCHEMA", app.schema)
    from tests.jobs_app import build_app

    return build_app()


def calls(effects_file: Path, line: str) -> int:
    if not effects_file.exists():
        return 0
    return effects_file.read_text().splitlines().count(line)


def run_until_settled(dsn: str, app: App, log: Path) -> list[int]:
    """Run burst workers one after another until one exits normally."""
    exit_codes = []
    for _ in range(5):
        process = start_worker_process(dsn, app.schema, log, "--burst")
        exit_codes.append(process.wait(timeout=60))
        if exit_codes[-1] == 0:
            break
    return exit_codes


@pytest.mark.parametrize(
    ("policy", "with_check", "expected_calls", "expected_state", "job_left"),
    [
        ("retry", False, 2, "done", False),
        ("retry", True, 1, "done", False),
        ("skip", False, 1, "skipped", False),
        ("skip", True, 1, "done", False),
        ("fail", False, 1, "uncertain", True),
        ("fail", True, 1, "done", False),
    ],
)
def test_kill_after_call_before_record(
    jobs_app: App,
    dsn: str,
    db: psycopg.Connection[Any],
    effects_file: Path,
    tmp_path: Path,
    policy: str,
    with_check: bool,
    expected_calls: int,
    expected_state: str,
    job_left: bool,
) -> None:
    name = f"charge_{policy}_{'check' if with_check else 'nocheck'}"
    job_id = jobs_app.registry[name].enqueue(42)

    exit_codes = run_until_settled(dsn, jobs_app, tmp_path / "workers.log")

    assert exit_codes == [-signal.SIGKILL, 0]
    assert calls(effects_file, "charge:42") == expected_calls
    state = scalar(db, jobs_app.schema, "SELECT state FROM {}.effects WHERE key = 'charge:42'")
    assert state == expected_state
    rows = fetch(
        db, jobs_app.schema, "SELECT expired_at IS NOT NULL FROM {}.jobs WHERE id = %s", job_id
    )
    assert rows == ([(True,)] if job_left else [])


def test_review_resolved_from_cli(
    jobs_app: App,
    dsn: str,
    db: psycopg.Connection[Any],
    effects_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = jobs_app.registry["charge_fail_nocheck"].enqueue(7)
    run_until_settled(dsn, jobs_app, tmp_path / "workers.log")
    schema_args = ["--dsn", dsn, "--schema", jobs_app.schema]

    assert main([*schema_args, "ledger", "--uncertain"]) == 0
    listed = capsys.readouterr().out
    assert f"charge:7  uncertain  job={job_id}" in listed
    assert main([*schema_args, "failed"]) == 0
    assert "may or may not have happened" in capsys.readouterr().out

    assert (
        main([*schema_args, "ledger", "resolve", "charge:7", "--done", "--result", '"ch_7"']) == 0
    )
    assert f"job {job_id} is runnable again" in capsys.readouterr().out
    run_until_settled(dsn, jobs_app, tmp_path / "workers.log")

    assert calls(effects_file, "charge:7") == 1
    assert scalar(db, jobs_app.schema, "SELECT count(*) FROM {}.jobs") == 0
    assert main([*schema_args, "ledger", "--uncertain"]) == 0
    assert "(no effects awaiting review)" in capsys.readouterr().out


def test_same_key_on_two_workers_calls_once(
    jobs_app: App, dsn: str, db: psycopg.Connection[Any], effects_file: Path, tmp_path: Path
) -> None:
    log = tmp_path / "workers.log"
    workers = [start_worker_process(dsn, jobs_app.schema, log) for _ in range(2)]
    try:
        wait_until(
            lambda: scalar(
                db,
                jobs_app.schema,
                "SELECT count(*) = 2 FROM pg_stat_activity "
                "WHERE application_name = 'reliable_jobs listener'",
            ),
            20,
            "both workers to listen",
        )
        # One statement and one commit: both jobs become visible at once.
        jobs_app.registry["slow_charge"].enqueue_many([call(99), call(99)])
        wait_until(
            lambda: scalar(db, jobs_app.schema, "SELECT count(*) FROM {}.jobs") == 0,
            20,
            "both jobs to finish",
        )
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            assert process.wait(timeout=20) == 0

    assert calls(effects_file, "charge:99") == 1
    rows = fetch(db, jobs_app.schema, "SELECT state, calls FROM {}.effects")
    assert rows == [("done", 1)]
