"""Exceptions raised by reliable_jobs, all under one root."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg.errors
from psycopg_pool import PoolTimeout


class ReliableJobsError(Exception):
    """Root of every error that reliable_jobs raises on purpose."""


class InvalidArgumentError(ReliableJobsError, ValueError):
    """An argument to the API is invalid; nothing was written."""


class UnknownJobError(ReliableJobsError, LookupError):
    """No job function is registered under a name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no job is registered under the name {name!r}")
        self.name = name


class LostOwnershipError(ReliableJobsError):
    """The worker no longer holds the lock of a job it was running.

    Its locker connection dropped, or the job row was deleted by someone
    else, so another worker may be running the job. The current attempt
    must not report any outcome, and its open transaction is rolled back.
    """

    def __init__(self, job_id: int, reason: str) -> None:
        super().__init__(f"job {job_id}: lost ownership ({reason})")
        self.job_id = job_id
        self.reason = reason


class JobNotFoundError(ReliableJobsError, LookupError):
    """A command named a job id that is not in the queue."""

    def __init__(self, job_id: int, detail: str = "") -> None:
        super().__init__(f"job {job_id} not found{detail}")
        self.job_id = job_id


class ConfigurationError(ReliableJobsError):
    """The database address or the app to load is missing or invalid."""


class DeferredError(ReliableJobsError):
    """Put the job back in the queue for `delay` seconds without counting the attempt.

    Raised from a job when it cannot make progress now for a reason that is
    not its fault, such as another worker being in the middle of the same
    side effect.
    """

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class ReviewRequiredError(ReliableJobsError):
    """A failure that retrying cannot fix: the job is kept as failed for review.

    The worker does not retry the job, regardless of its retry policy; a
    person inspects it (`reliable-jobs failed`) and retries it once the
    cause is settled.
    """


class DatabaseUnavailableError(ReliableJobsError):
    """The database cannot be reached with the configured address."""


class SchemaNotMigratedError(ConfigurationError):
    """The schema lacks the tables or functions of this version: run migrate."""

    def __init__(self, schema: str, detail: str) -> None:
        super().__init__(
            f"schema {schema!r} is missing reliable_jobs objects ({detail}); create or upgrade "
            "it with `reliable-jobs migrate` or app.migrate()"
        )
        self.schema = schema


# SQLSTATEs meaning the schema, a table or a function of ours does not exist.
_MISSING_OBJECT_STATES = {"3F000", "42P01", "42883"}


@contextmanager
def translated_database_errors(schema: str) -> Iterator[None]:
    """Turn connection failures and a missing schema into reliable_jobs errors."""
    try:
        yield
    except psycopg.OperationalError as error:
        raise DatabaseUnavailableError(
            f"cannot reach the database: {str(error).strip()}; check the address "
            "(--dsn, RELIABLE_JOBS_DSN or DATABASE_URL) and that PostgreSQL is running"
        ) from error
    except psycopg.errors.ProgrammingError as error:
        if error.sqlstate in _MISSING_OBJECT_STATES:
            detail = error.diag.message_primary or str(error)
            raise SchemaNotMigratedError(schema, detail) from error
        raise
    except PoolTimeout as error:
        raise DatabaseUnavailableError(
            f"cannot get a database connection: {error}; check the address and that "
            "PostgreSQL is running"
        ) from error
