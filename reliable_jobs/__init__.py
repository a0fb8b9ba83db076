"""Background jobs on PostgreSQL that are safe to run again after any crash."""

from .app import App
from .context import JobContext
from .errors import (
    ConfigurationError,
    DeferredError,
    InvalidArgumentError,
    JobNotFoundError,
    LostOwnershipError,
    ReliableJobsError,
    ReviewRequiredError,
    UnknownJobError,
)
from .idempotency import (
    EffectBusyError,
    EffectMismatchError,
    EffectUncertainError,
    NoLedgerError,
    current_effect_key,
    idempotent,
)
from .jobs import JobCall, JobFunction, call
from .retry import RetryPolicy
from .transactional import transactional_destroy
from .worker import Worker

__all__ = [
    "App",
    "ConfigurationError",
    "DeferredError",
    "EffectBusyError",
    "EffectMismatchError",
    "EffectUncertainError",
    "InvalidArgumentError",
    "JobCall",
    "JobContext",
    "JobFunction",
    "JobNotFoundError",
    "LostOwnershipError",
    "NoLedgerError",
    "ReliableJobsError",
    "RetryPolicy",
    "ReviewRequiredError",
    "UnknownJobError",
    "Worker",
    "call",
    "current_effect_key",
    "idempotent",
    "transactional_destroy",
]
