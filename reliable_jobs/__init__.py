"""Background jobs on PostgreSQL that are safe to run again after any crash."""

from .app import App
from .context import JobContext
from .errors import (
    ConfigurationError,
    InvalidArgumentError,
    JobNotFoundError,
    LostOwnershipError,
    ReliableJobsError,
    UnknownJobError,
)
from .jobs import JobCall, JobFunction, call
from .retry import RetryPolicy
from .worker import Worker

__all__ = [
    "App",
    "ConfigurationError",
    "InvalidArgumentError",
    "JobCall",
    "JobContext",
    "JobFunction",
    "JobNotFoundError",
    "LostOwnershipError",
    "ReliableJobsError",
    "RetryPolicy",
    "UnknownJobError",
    "Worker",
    "call",
]
