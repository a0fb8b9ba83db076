"""The reliable-jobs command line."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from tenacity import stop_after_attempt, wait_fixed

from reliable_jobs import App, InvalidArgumentError, JobContext, RetryPolicy, call
from reliable_jobs.cli import main
from reliable_jobs.errors import DatabaseUnavailableError, SchemaNotMigratedError
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
    assert "applied [1, 2, 3]" in out
    assert scalar(db, schema, "SELECT count(*) FROM {}.jobs") == 0


def test_dsn_from_environment(
    dsn: str, schema: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELIABLE_JOBS_DSN", raising=False)
    monkeypatch.setenv("DATABASE_URL", dsn)

    code, out, _ = run_cli(capsys, "--schema", schema, "migrate")

    assert code == 0
    assert "applied [1, 2, 3]" in out


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


UNREACHABLE = "postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=2"


def test_options_after_command(
    dsn: str, schema: str, capsys: pytest.CaptureFixture[str], db: psycopg.Connection[Any]
) -> None:
    code, out, _ = run_cli(capsys, "migrate", "--dsn", dsn, "--schema", schema, "-v")

    assert code == 0
    assert f"schema {schema}: applied [1, 2, 3]" in out


@pytest.mark.parametrize("command", [["status"], ["failed"], ["migrate"], ["retry", "1"]])
def test_unreachable_database_is_one_line(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    code, _, err = run_cli(capsys, "--dsn", UNREACHABLE, *command)

    assert code == 2
    assert err.startswith("error: cannot reach the database")
    assert "Traceback" not in err


def test_unmigrated_schema_says_migrate(
    dsn: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "--dsn", dsn, "--schema", schema, "status")

    assert code == 2
    assert f"schema {schema!r} is missing reliable_jobs objects" in err
    assert "reliable-jobs migrate" in err


def test_enqueue_on_unmigrated_schema(dsn: str, schema: str) -> None:
    app = App(dsn, schema=schema)

    @app.job(name="noop")
    def noop(ctx: JobContext) -> None:
        pass

    with pytest.raises(SchemaNotMigratedError, match="migrate"):
        noop.enqueue()
    app.close()


def test_worker_on_unmigrated_schema(dsn: str, schema: str) -> None:
    app = App(dsn, schema=schema)

    with pytest.raises(SchemaNotMigratedError, match="migrate"):
        app.run_worker(burst=True, install_signal_handlers=False)


def test_burst_worker_unreachable_fails_fast() -> None:
    app = App(UNREACHABLE, schema="anything")

    with pytest.raises(DatabaseUnavailableError, match="cannot reach the database"):
        app.run_worker(burst=True, install_signal_handlers=False)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.jobs_app:nope", "module tests.jobs_app has no attribute 'nope'"),
        ("tests/jobs_app.py:build_app", "name the module instead: tests.jobs_app:build_app"),
        ("tests.jobs_app:record_run", "not a reliable_jobs.App"),
        ("tests.jobs_app:App", "not a reliable_jobs.App"),
        ("tests.no_such_module:app", "cannot import 'tests.no_such_module'"),
    ],
)
def test_worker_app_spec_errors(
    dsn: str, capsys: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    code, _, err = run_cli(capsys, "--dsn", dsn, "worker", "--app", spec)

    assert code == 2
    assert message in err


def test_worker_schema_must_match_app(
    dsn: str, app: App, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RJ_TEST_DSN", dsn)
    monkeypatch.setenv("RJ_TEST_SCHEMA", app.schema)

    code, _, err = run_cli(
        capsys, "worker", "--app", "tests.jobs_app:build_app", "--schema", "other", "--burst"
    )

    assert code == 2
    assert f"differs from the app's schema {app.schema!r}" in err


def test_enqueue_checks_signature(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="welcome")
    def welcome(ctx: JobContext, user_id: int) -> None:
        pass

    with pytest.raises(InvalidArgumentError, match="missing a required argument: 'user_id'"):
        welcome.enqueue()  # type: ignore[call-arg]
    with pytest.raises(InvalidArgumentError, match="unexpected keyword argument 'usr_id'"):
        welcome.enqueue(1, usr_id=1)  # type: ignore[call-arg]
    with pytest.raises(InvalidArgumentError, match="item 1"):
        welcome.enqueue_many([call(1), call(1, 2)])

    assert scalar(db, app.schema, "SELECT count(*) FROM {}.jobs") == 0
