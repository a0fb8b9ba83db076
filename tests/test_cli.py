"""The reliable-jobs command line."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from tenacity import stop_after_attempt, wait_fixed

from reliable_jobs import App, JobContext, RetryPolicy
from reliable_jobs.cli import main
from tests.helpers import scalar


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_migrate_creates_schema(
    dsn: str, schema: str, capsys: pytest.CaptureFixture[str], db: psycopg.Connection[Any]
) -> None:
    code, out, _ = run_cli(capsys, "--dsn", dsn, "--schema", schema, "migrate")

    assert code == 0
    assert "applied [1]" in out
    assert scalar(db, schema, "SELECT count(*) FROM {}.jobs") == 0


def test_dsn_from_environment(
    dsn: str, schema: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELIABLE_JOBS_DSN", raising=False)
    monkeypatch.setenv("DATABASE_URL", dsn)

    code, out, _ = run_cli(capsys, "--schema", schema, "migrate")

    assert code == 0
    assert "applied [1]" in out


def test_missing_dsn_is_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELIABLE_JOBS_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)

    code, _, err = run_cli(capsys, "status")

    assert code == 2
    assert "no database address" in err
    assert "--dsn" in err


def test_status_failed_and_retry(
    app: App, dsn: str, capsys: pytest.CaptureFixture[str], db: psycopg.Connection[Any]
) -> None:
    @app.job(name="broken", retry=RetryPolicy(stop_after_attempt(1), wait_fixed(0)))
    def broken(ctx: JobContext) -> None:
        raise RuntimeError("provider unreachable")

    @app.job(name="later")
    def later(ctx: JobContext) -> None:
        pass

    failed_id = broken.configure(queue="fragile").enqueue()
    later.configure(delay=3600).enqueue()
    later.enqueue()
    app.run_worker(queues=["fragile"], burst=True, install_signal_handlers=False)

    code, out, _ = run_cli(capsys, "--dsn", dsn, "--schema", app.schema, "status")
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert lines["broken"][1:5] == ["0", "0", "0", "1"]
    assert lines["later"][1:5] == ["1", "1", "0", "0"]

    code, out, _ = run_cli(capsys, "--dsn", dsn, "--schema", app.schema, "failed")
    assert code == 0
    assert f"{failed_id}  broken" in out
    assert "RuntimeError: provider unreachable" in out

    code, out, _ = run_cli(capsys, "--dsn", dsn, "--schema", app.schema, "retry", str(failed_id))
    assert code == 0
    expired = scalar(db, app.schema, "SELECT expired_at FROM {}.jobs WHERE id = %s", failed_id)
    assert expired is None


def test_retry_of_unknown_id(app: App, dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "--dsn", dsn, "--schema", app.schema, "retry", "424242")

    assert code == 2
    assert "job 424242 not found" in err


def test_worker_rejects_bad_app_spec(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "--dsn", dsn, "worker", "--app", "no_colon_here")

    assert code == 2
    assert "module:attribute" in err
