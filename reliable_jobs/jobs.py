"""Job functions: registration metadata and the ways to enqueue them."""

from __future__ import annotations

import datetime as dt
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

import psycopg

from . import queries
from .errors import InvalidArgumentError, translated_database_errors
from .payload import encode_arguments
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .app import App
    from .context import JobContext

P = ParamSpec("P")
R = TypeVar("R")

PRIORITY_RANGE = range(-32768, 32768)  # the range of the smallint column


@dataclass(frozen=True)
class JobCall:
    """The arguments of one job in a bulk enqueue; build it with call()."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


def call(*args: Any, **kwargs: Any) -> JobCall:
    """Return the arguments of one job for JobFunction.enqueue_many()."""
    return JobCall(args, kwargs)


@dataclass(frozen=True)
class EnqueueOptions:
    """Where, when and in which transaction a job is inserted."""

    queue: str
    priority: int
    run_at: dt.datetime | None = None
    delay_seconds: float = 0.0
    connection: psycopg.Connection[Any] | None = None


class JobFunction(Generic[P, R]):
    """A function registered as a job; call enqueue() to run it in a worker."""

    def __init__(
        self,
        app: App,
        func: Callable[Concatenate[JobContext, P], R],
        *,
        name: str,
        queue: str,
        priority: int,
        retry: RetryPolicy,
    ) -> None:
        self.app = app
        self.func = func
        self.name = name
        self.retry = retry
        self.defaults = EnqueueOptions(queue=check_queue(queue), priority=check_priority(priority))
        self.signature = inspect.signature(func)
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise InvalidArgumentError unless the job function accepts these arguments."""
        try:
            self.signature.bind(None, *args, **kwargs)
        except TypeError as error:
            plain = self.signature.replace(
                parameters=[
                    parameter.replace(annotation=inspect.Parameter.empty)
                    for parameter in self.signature.parameters.values()
                ],
                return_annotation=inspect.Signature.empty,
            )
            raise InvalidArgumentError(
                f"arguments do not match the job {self.name}{plain}: {error}"
            ) from None

    def __call__(self, ctx: JobContext, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the job body directly, in this process, with the given context."""
        return self.func(ctx, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<JobFunction {self.name!r} queue={self.defaults.queue!r}>"

    def configure(
        self,
        *,
        connection: psycopg.Connection[Any] | None = None,
        run_at: dt.datetime | None = None,
        delay: float | dt.timedelta | None = None,
        priority: int | None = None,
        queue: str | None = None,
    ) -> ConfiguredJob[P, R]:
        """Return this job with other enqueue options; invalid ones raise at once."""
        options = self.defaults
        if connection is not None:
            options = replace(options, connection=check_connection(connection))
        if run_at is not None and delay is not None:
            raise InvalidArgumentError("run_at and delay were both given; pass only one of them")
        if run_at is not None:
            options = replace(options, run_at=check_run_at(run_at))
        if delay is not None:
            options = replace(options, delay_seconds=check_delay(delay))
        if priority is not None:
            options = replace(options, priority=check_priority(priority))
        if queue is not None:
            options = replace(options, queue=check_queue(queue))
        return ConfiguredJob(self, options)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Insert one job, commit it, and return its id."""
        return ConfiguredJob(self, self.defaults).enqueue(*args, **kwargs)

    def enqueue_many(self, calls: Iterable[JobCall]) -> list[int]:
        """Insert many jobs in one statement and return their ids, in order."""
        return ConfiguredJob(self, self.defaults).enqueue_many(calls)


@dataclass(frozen=True)
class ConfiguredJob(Generic[P, R]):
    """A job function with enqueue options set by JobFunction.configure()."""

    job: JobFunction[P, R]
    options: EnqueueOptions

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Insert one job and return its id.

        With a connection, the insert joins that connection's transaction:
        a rollback discards the job, and no worker can lock it before the commit.
        Without one, the insert commits on its own.
        """
        self.job.check_arguments(args, kwargs)
        args_json, kwargs_json = encode_arguments(args, kwargs)
        ids = self._insert(queries.enqueue_one, self._row(args_json, kwargs_json))
        return ids[0]

    def enqueue_many(self, calls: Iterable[JobCall]) -> list[int]:
        """Insert many jobs in one statement and return their ids, in order.

        Every call is validated before anything is inserted, so an invalid
        one inserts none of them.
        """
        encoded = [_encode_call(self.job, index, item) for index, item in enumerate(calls)]
        if not encoded:
            return []
        params = self._row([a for a, _ in encoded], [k for _, k in encoded])
        return self._insert(queries.enqueue_many, params)

    def _row(self, args: str | list[str], kwargs: str | list[str]) -> dict[str, Any]:
        options = self.options
        return {
            "queue": options.queue,
            "job_name": self.job.name,
            "priority": options.priority,
            "run_at": options.run_at,
            "delay": options.delay_seconds,
            "args": args,
            "kwargs": kwargs,
            "channel": self.job.app.channel,
        }

    def _insert(self, query: queries.Query, params: dict[str, Any]) -> list[int]:
        app = self.job.app
        statement = query(app.schema)
        with translated_database_errors(app.schema):
            if self.options.connection is not None:
                rows = self.options.connection.execute(statement, params).fetchall()
            else:
                with app.pool.connection() as conn:
                    rows = conn.execute(statement, params).fetchall()
        return [row[0] for row in rows]


def _encode_call(job: JobFunction[Any, Any], index: int, item: JobCall) -> tuple[str, str]:
    if not isinstance(item, JobCall):
        raise InvalidArgumentError(
            f"enqueue_many item {index} is {item!r}; build each item with "
            "reliable_jobs.call(*args, **kwargs)"
        )
    try:
        job.check_arguments(item.args, item.kwargs)
        return encode_arguments(item.args, item.kwargs)
    except InvalidArgumentError as error:
        raise InvalidArgumentError(f"enqueue_many item {index}: {error}") from None


def check_queue(queue: Any) -> str:
    """Return the queue name, or raise InvalidArgumentError."""
    if not isinstance(queue, str) or not queue or "\x00" in queue:
        raise InvalidArgumentError(f"queue={queue!r} is invalid; pass a non-empty string")
    return queue


def check_priority(priority: Any) -> int:
    """Return the priority, or raise InvalidArgumentError."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidArgumentError(f"priority={priority!r} is invalid; pass an int")
    if priority not in PRIORITY_RANGE:
        raise InvalidArgumentError(
            f"priority={priority} is out of range; pass an int from "
            f"{PRIORITY_RANGE.start} to {PRIORITY_RANGE.stop - 1} (lower runs first)"
        )
    return priority


def check_run_at(run_at: Any) -> dt.datetime:
    """Return run_at if it is an aware datetime, or raise InvalidArgumentError."""
    if not isinstance(run_at, dt.datetime):
        raise InvalidArgumentError(f"run_at={run_at!r} is invalid; pass a datetime")
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        raise InvalidArgumentError(
            f"run_at={run_at.isoformat()} has no time zone, so the moment it names is "
            "ambiguous; pass an aware datetime such as datetime.now(timezone.utc) + "
            "timedelta(minutes=5), or use delay= to count from the database clock"
        )
    return run_at


def check_delay(delay: Any) -> float:
    """Return the delay in seconds, or raise InvalidArgumentError."""
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidArgumentError(
            f"delay={delay!r} is invalid; pass seconds as a number or a timedelta"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgumentError(
            f"delay={delay!r} is invalid; pass a finite number of seconds >= 0"
        )
    return float(seconds)


def check_connection(connection: Any) -> psycopg.Connection[Any]:
    """Return the connection if it is a usable synchronous psycopg connection."""
    if not isinstance(connection, psycopg.Connection):
        raise InvalidArgumentError(
            f"connection={connection!r} is not a psycopg.Connection; pass the synchronous "
            "psycopg 3 connection whose transaction the job should join"
        )
    if connection.closed:
        raise InvalidArgumentError("connection= is closed; pass an open connection")
    return connection
