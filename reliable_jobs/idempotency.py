"""@idempotent: record external side effects by key so that a retry skips them."""

from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
import json
import logging
import random
import re
import string
from collections.abc import Callable
from typing import Any, Literal, ParamSpec, TypeVar

import psycopg

from . import crashpoints
from .context import JobContext
from .errors import DeferredError, InvalidArgumentError, ReliableJobsError, ReviewRequiredError
from .ledger import Ledger
from .payload import check_json_value
from .schema import effect_lock_class

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger(__name__)

OnUncertain = Literal["retry", "skip", "fail"]
ON_UNCERTAIN_VALUES = ("retry", "skip", "fail")

# How long a job waits when another live worker is in the middle of the
# same effect: long enough for a typical API call, short enough to feel prompt.
BUSY_DELAY_SECONDS = (0.5, 1.5)

_current_key: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "reliable_jobs_current_effect_key", default=None
)


class EffectBusyError(DeferredError):
    """Another live worker is calling the same effect; the job waits a moment."""

    def __init__(self, key: str, delay: float) -> None:
        super().__init__(f"effect {key!r} is in progress in another worker", delay)
        self.key = key


class EffectMismatchError(ReviewRequiredError):
    """An effect key was used before with other arguments; the effect is not called."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"effect {key!r} was recorded with other arguments; the key must identify one "
            "call, so include every argument that changes the effect in the key"
        )
        self.key = key


class EffectUncertainError(ReviewRequiredError):
    """An effect's outcome is unknown and its policy is to stop for review."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"effect {key!r} may or may not have happened (its call was cut off); check the "
            "external system, then run: reliable-jobs ledger resolve "
            f"{key!r} --done (or --not-done)"
        )
        self.key = key


class NoLedgerError(ReliableJobsError):
    """An @idempotent function was called where no ledger can be reached."""


def current_effect_key() -> str:
    """Return the key of the @idempotent call running in this thread.

    It is the same on every retry of the effect, so pass it to the external
    system as its idempotency key (an Idempotency-Key header, for example).
    """
    key = _current_key.get()
    if key is None:
        raise ReliableJobsError(
            "current_effect_key() was called outside an @idempotent function; call it "
            "from inside the decorated function"
        )
    return key


def idempotent(
    *,
    key: str | Callable[..., str],
    check: Callable[..., Any] | None = None,
    on_uncertain: OnUncertain = "retry",
    uncertain_errors: tuple[type[BaseException], ...] = (),
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Record each call of the decorated side effect in the ledger under `key`.

    `key` is a format string over the function's arguments by name
    ("charge:{card_id}") or a function of the same arguments returning a
    string. A call whose key is already done returns the stored result
    without calling. When a previous call's outcome is unknown (its worker
    died during it, or it raised one of `uncertain_errors`), `check` is
    called with the same arguments: a truthy return means the effect
    happened and becomes the result. Otherwise `on_uncertain` decides:
    "retry" calls again (at least once), "skip" returns None without
    calling (at most once), "fail" stops the job for review.
    """
    _check_options(key, check, on_uncertain, uncertain_errors)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(func)
        if isinstance(key, str):
            _check_key_fields(key, signature, func)

        @functools.wraps(func)
        def call_once(*args: P.args, **kwargs: P.kwargs) -> R:
            ctx = JobContext.current()
            if ctx is None:
                raise NoLedgerError(
                    f"{func.__qualname__} is @idempotent and was called outside a running job, "
                    "where it cannot reach the ledger; call it from a job function"
                )
            arguments = _bound_arguments(signature, args, kwargs)
            effect = _Effect(
                func,
                args,
                kwargs,
                ctx,
                _render_key(key, arguments, args, kwargs, func),
                _fingerprint(arguments, func),
            )
            result: R = effect.run(check, on_uncertain, uncertain_errors)
            return result

        return call_once

    return decorate


class _Effect:
    """One call of an @idempotent function, from claim to settled outcome."""

    def __init__(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ctx: JobContext,
        key: str,
        fingerprint: str,
    ) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.ctx = ctx
        self.key = key
        self.fingerprint = fingerprint
        self.conn = ctx.autonomous_connection
        self.ledger = Ledger(self.conn, schema=ctx.schema, lock_class=effect_lock_class(ctx.schema))

    def run(
        self,
        check: Callable[..., Any] | None,
        on_uncertain: OnUncertain,
        uncertain_errors: tuple[type[BaseException], ...],
    ) -> Any:
        if _current_key.get() == self.key:
            raise ReliableJobsError(
                f"effect {self.key!r} was called again from inside its own call"
            )
        crashpoints.reach("before_claim")
        claim = self.ledger.claim(self.key, self.fingerprint, self.ctx.job_id, self.ctx.name)
        if claim.outcome in ("claimed", "uncertain"):
            crashpoints.reach("after_claim")

        if claim.outcome == "busy":
            raise EffectBusyError(self.key, random.uniform(*BUSY_DELAY_SECONDS))
        if claim.outcome == "mismatch":
            raise EffectMismatchError(self.key)
        if claim.outcome in ("done", "skipped"):
            self._log("skipped: already %s", claim.outcome)
            return claim.result
        if claim.outcome == "uncertain":
            return self._resolve_uncertain(check, on_uncertain, uncertain_errors)
        return self._call(uncertain_errors)

    def _resolve_uncertain(
        self,
        check: Callable[..., Any] | None,
        on_uncertain: OnUncertain,
        uncertain_errors: tuple[type[BaseException], ...],
    ) -> Any:
        """Decide an unknown outcome while holding the key's lock."""
        if check is not None:
            try:
                found = check(*self.args, **self.kwargs)
            except BaseException as error:
                self.ledger.settle(self.key, "uncertain", error=f"check raised {error!r}")
                raise
            if found:
                self._log("outcome was uncertain; check found it done")
                self._settle_done(found)
                return found

        if on_uncertain == "skip":
            self._log("outcome was uncertain; skipped by policy")
            self.ledger.settle(self.key, "skipped")
            return None
        if on_uncertain == "fail":
            self.ledger.settle(self.key, "uncertain")
            raise EffectUncertainError(self.key)

        self._log("outcome was uncertain; calling again by policy")
        self.ledger.reclaim(self.key)
        return self._call(uncertain_errors)

    def _call(self, uncertain_errors: tuple[type[BaseException], ...]) -> Any:
        """Call the function under a claim the caller holds, then settle the claim."""
        owner_pid = self.conn.info.backend_pid
        token = _current_key.set(self.key)
        try:
            crashpoints.reach("before_call")
            result = self.func(*self.args, **self.kwargs)
        except uncertain_errors as error:
            self.ledger.settle(self.key, "uncertain", error=f"{type(error).__name__}: {error}")
            raise
        except BaseException:
            self.ledger.settle(self.key, "released")
            raise
        finally:
            _current_key.reset(token)

        crashpoints.reach("after_call")
        self._settle_done(result, owner_pid)
        return result

    def _settle_done(self, result: Any, owner_pid: int | None = None) -> None:
        try:
            check_json_value(result, "the return value")
        except InvalidArgumentError as error:
            self._record_done(None, owner_pid)
            raise InvalidArgumentError(
                f"effect {self.key!r} happened and is recorded as done, but {error}; "
                "return JSON from an @idempotent function (retries return None instead)"
            ) from None
        self._record_done(result, owner_pid)

    def _record_done(self, result: Any, owner_pid: int | None) -> None:
        crashpoints.reach("before_record")
        try:
            self.ledger.settle(self.key, "done", result)
        except psycopg.OperationalError:
            if owner_pid is None:
                raise
            # The claim's session is gone, and its lock with it. Record the
            # outcome on a new connection unless another claim took the key.
            # NOTE: while the lock was gone, another worker may have found the
            # claim uncertain and, with on_uncertain="retry" and no check,
            # called the function a second time.
            self.ledger.conn = self.ctx.autonomous_connection
            if not self.ledger.settle_orphaned(self.key, "done", result, owner_pid):
                raise
            logger.warning(
                "Effect %s: recorded as done after its ledger connection was lost",
                self.key,
                extra={"action": "effect_done", "job_id": self.ctx.job_id},
            )
        crashpoints.reach("after_record")

    def _log(self, message: str, *args: Any) -> None:
        logger.info(
            "Job %d (%s): effect %s " + message,
            self.ctx.job_id,
            self.ctx.name,
            self.key,
            *args,
            extra={"action": "effect", "job_id": self.ctx.job_id, "job_name": self.ctx.name},
        )


def _check_options(key: Any, check: Any, on_uncertain: Any, uncertain_errors: Any) -> None:
    if not (isinstance(key, str) and key) and not callable(key):
        raise InvalidArgumentError(
            f"key={key!r} is invalid; pass a format string such as 'charge:{{card_id}}' or "
            "a function of the same arguments returning a string"
        )
    if check is not None and not callable(check):
        raise InvalidArgumentError(f"check={check!r} is not callable")
    if on_uncertain not in ON_UNCERTAIN_VALUES:
        raise InvalidArgumentError(
            f"on_uncertain={on_uncertain!r} is invalid; pass one of {ON_UNCERTAIN_VALUES}"
        )
    if not isinstance(uncertain_errors, tuple) or not all(
        isinstance(kind, type) and issubclass(kind, BaseException) for kind in uncertain_errors
    ):
        raise InvalidArgumentError(
            f"uncertain_errors={uncertain_errors!r} is invalid; pass a tuple of exception "
            "classes, such as (TimeoutError,)"
        )


def _check_key_fields(key: str, signature: inspect.Signature, func: Callable[..., Any]) -> None:
    """Raise InvalidArgumentError if `key` names a field that is not a parameter."""
    parameters = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return  # any name may arrive through **kwargs
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(key) if field is not None]
    except ValueError as error:
        raise InvalidArgumentError(f"key {key!r} is not a valid format string: {error}") from None
    for field in fields:
        name = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not name or name not in parameters:
            raise InvalidArgumentError(
                f"key {key!r} of {func.__qualname__} names {field!r}, which is not one of its "
                f"parameters {list(parameters)}; name fields after them, as in "
                f"'charge:{{{next(iter(parameters), 'argument')}}}'"
            )


def _bound_arguments(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _render_key(
    key: str | Callable[..., str],
    arguments: dict[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    func: Callable[..., Any],
) -> str:
    if callable(key):
        rendered = key(*args, **kwargs)
    else:
        try:
            rendered = key.format(**arguments)
        except (KeyError, IndexError) as error:
            raise InvalidArgumentError(
                f"key {key!r} of {func.__qualname__} names {error}, which is not one of its "
                f"arguments {sorted(arguments)}"
            ) from None
    if not isinstance(rendered, str) or not rendered or "\x00" in rendered:
        raise InvalidArgumentError(
            f"the effect key of {func.__qualname__} is {rendered!r}; it must be a non-empty "
            "string without NUL characters"
        )
    return rendered


def _fingerprint(arguments: dict[str, Any], func: Callable[..., Any]) -> str:
    """Hash the call's arguments, leaving out a JobContext passed to it."""
    values = {name: value for name, value in arguments.items() if not isinstance(value, JobContext)}
    try:
        check_json_value(values, "arguments")
    except InvalidArgumentError as error:
        raise InvalidArgumentError(
            f"{func.__qualname__} is @idempotent, so its arguments are fingerprinted as "
            f"JSON: {error}"
        ) from None
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
