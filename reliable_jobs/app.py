"""The App: a database, a schema, and the jobs registered on them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, overload

import psycopg
from psycopg_pool import ConnectionPool

from . import schema as schema_module
from .connections import check_socket
from .errors import ConfigurationError, InvalidArgumentError, translated_database_errors
from .jobs import JobFunction
from .retry import RetryPolicy, coerce_policy

if TYPE_CHECKING:
    from .context import JobContext

P = ParamSpec("P")
R = TypeVar("R")

DSN_VARIABLES = ("RELIABLE_JOBS_DSN", "DATABASE_URL")


def conninfo_from_environment() -> str | None:
    """Return the database address from RELIABLE_JOBS_DSN, else DATABASE_URL."""
    for name in DSN_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    return None


class App:
    """Jobs on one PostgreSQL database, in one schema.

    `conninfo` is a libpq connection string or URI, or a psycopg_pool
    ConnectionPool that enqueue() then borrows from. With None, the address
    is read from RELIABLE_JOBS_DSN, else DATABASE_URL, at first use. The
    worker's locker and listener always use direct connections, because
    session advisory locks and LISTEN do not work through a pooler in
    transaction mode.
    """

    def __init__(
        self, conninfo: str | ConnectionPool | None = None, *, schema: str = "reliable_jobs"
    ) -> None:
        self.schema = schema_module.check_schema_name(schema)
        self.lock_class = schema_module.lock_class(schema)
        self.effect_lock_class = schema_module.effect_lock_class(schema)
        self.channel = f"{schema}_jobs"[:63]
        self.registry: dict[str, JobFunction[Any, Any]] = {}
        self._pool: ConnectionPool | None = None
        self._owns_pool = False
        self._conninfo: str | None = None
        self._connect_kwargs: dict[str, Any] = {}

        if isinstance(conninfo, ConnectionPool):
            self._pool = conninfo
            pool_conninfo = conninfo.conninfo
            pool_kwargs = conninfo.kwargs
            self._conninfo = pool_conninfo() if callable(pool_conninfo) else pool_conninfo
            resolved_kwargs = pool_kwargs() if callable(pool_kwargs) else pool_kwargs
            self._connect_kwargs = dict(resolved_kwargs or {})
        elif isinstance(conninfo, str) or conninfo is None:
            self._conninfo = conninfo
        else:
            raise InvalidArgumentError(
                f"conninfo={conninfo!r} is invalid; pass a connection string, a "
                "psycopg_pool.ConnectionPool, or None to read RELIABLE_JOBS_DSN"
            )

    def __repr__(self) -> str:
        return f"<App schema={self.schema!r} jobs={len(self.registry)}>"

    def __enter__(self) -> App:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def conninfo(self) -> str:
        """The database address, resolved from the environment when not given."""
        if self._conninfo is None:
            self._conninfo = conninfo_from_environment()
        if not self._conninfo:
            raise ConfigurationError(
                "no database address: pass App(conninfo=...), set RELIABLE_JOBS_DSN or "
                "DATABASE_URL, or give reliable-jobs --dsn; for example "
                "postgresql://user@127.0.0.1:5432/dbname"
            )
        return self._conninfo

    @conninfo.setter
    def conninfo(self, conninfo: str) -> None:
        if self._pool is not None and not self._owns_pool:
            raise ConfigurationError(
                "this app enqueues through a pool passed to App(); change the pool's "
                "address instead"
            )
        self.close()
        self._conninfo = conninfo

    @property
    def pool(self) -> ConnectionPool:
        """The connection pool used to enqueue jobs, opened at first use."""
        if self._pool is None:
            self._pool = ConnectionPool(
                self.conninfo,
                min_size=1,
                max_size=4,
                kwargs={"autocommit": True},
                check=check_socket,
                open=False,
                name=f"reliable_jobs.{self.schema}",
            )
            self._owns_pool = True
        if self._owns_pool and self._pool.closed:
            # A direct connection first: an unreachable server then fails at
            # once with its real reason, not after the pool's 30 s timeout.
            with translated_database_errors(self.schema):
                self.connect().close()
                self._pool.open(wait=True)
        return self._pool

    def connect(self, purpose: str = "client", **options: Any) -> psycopg.Connection[Any]:
        """Open a direct autocommit connection to the app's database.

        `purpose` becomes the application_name that pg_stat_activity shows,
        as "reliable_jobs <purpose>", unless the conninfo sets one.
        """
        kwargs = {
            "application_name": f"reliable_jobs {purpose}",
            **options,
            **self._connect_kwargs,
            "autocommit": True,
        }
        return psycopg.connect(self.conninfo, **kwargs)

    @contextmanager
    def admin_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Open a direct connection for one administrative task, then close it.

        Connection failures and a missing schema surface as reliable_jobs
        errors that name the fix.
        """
        with translated_database_errors(self.schema), self.connect("admin") as conn:
            yield conn

    def close(self) -> None:
        """Close the pool the app opened; a pool passed in is left to its owner."""
        if self._pool is not None and self._owns_pool:
            self._pool.close()
            self._pool = None  # a closed pool cannot reopen; the next use makes a new one

    def migrate(self) -> list[int]:
        """Create or upgrade the schema; return the numbers of migrations applied."""
        with self.admin_connection() as conn:
            return schema_module.migrate(conn, self.schema)

    @overload
    def job(self, func: Callable[Concatenate[JobContext, P], R], /) -> JobFunction[P, R]: ...

    @overload
    def job(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 100,
        retry: RetryPolicy | int | None = None,
    ) -> Callable[[Callable[Concatenate[JobContext, P], R]], JobFunction[P, R]]: ...

    def job(
        self,
        func: Any = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 100,
        retry: RetryPolicy | int | None = None,
    ) -> Any:
        """Register a job function `f(ctx, *args, **kwargs)`.

        `retry` is a RetryPolicy, or a max attempt count; None keeps the
        default (25 attempts, exponential backoff with jitter up to an hour).
        """
        policy = coerce_policy(retry)

        def register(f: Callable[Concatenate[JobContext, P], R]) -> JobFunction[P, R]:
            job_name = name if name is not None else f"{f.__module__}.{f.__qualname__}"
            if not isinstance(job_name, str) or not job_name:
                raise InvalidArgumentError(f"name={name!r} is invalid; pass a non-empty string")
            if job_name in self.registry:
                raise InvalidArgumentError(
                    f"a job named {job_name!r} is already registered; pass name= to tell "
                    "the two apart"
                )
            job_function = JobFunction(
                self, f, name=job_name, queue=queue, priority=priority, retry=policy
            )
            self.registry[job_name] = job_function
            return job_function

        if func is not None:
            return register(func)
        return register

    def run_worker(
        self,
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        burst: bool = False,
        **options: Any,
    ) -> None:
        """Run a worker in this thread until it is stopped; see Worker for options."""
        from .worker import Worker

        Worker(self, queues=queues, concurrency=concurrency, burst=burst, **options).run()
