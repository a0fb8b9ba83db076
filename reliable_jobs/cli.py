"""The reliable-jobs command: migrate, run a worker, inspect and repair the queue."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import admin, ledger
from .app import App, conninfo_from_environment
from .errors import ConfigurationError, ReliableJobsError

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    parser = build_parser()
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if options.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not options.verbose:
        logging.getLogger("psycopg").setLevel(logging.WARNING)
    try:
        code: int = options.handler(options)
    except ReliableJobsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return code


DEFAULT_SCHEMA = "reliable_jobs"


def add_common_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """Add the options every command takes, before or after the command name.

    On sub-commands they default to SUPPRESS so that an option given
    before the command name is not overwritten by an absent one after it.
    """
    default: Any = None if top_level else argparse.SUPPRESS
    parser.add_argument(
        "--dsn",
        default=default,
        help="database address (default: RELIABLE_JOBS_DSN, else DATABASE_URL)",
    )
    parser.add_argument(
        "--schema",
        default=default,
        help=f"schema of the jobs table (default: {DEFAULT_SCHEMA}; for worker, the app's)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if top_level else argparse.SUPPRESS,
        help="log at DEBUG level",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reliable-jobs", description="Background jobs on PostgreSQL, safe to retry."
    )
    add_common_options(parser, top_level=True)
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common, top_level=False)
    commands = parser.add_subparsers(
        required=True, metavar="COMMAND", parser_class=_parser_with(common)
    )

    migrate = commands.add_parser("migrate", help="create or upgrade the schema")
    migrate.set_defaults(handler=cmd_migrate)

    worker = commands.add_parser("worker", help="run jobs until SIGTERM or SIGINT")
    worker.add_argument("--app", required=True, help="the App to run, as module:attribute")
    worker.add_argument(
        "--queue",
        action="append",
        dest="queues",
        help="queue to take jobs from (repeatable; default: all queues)",
    )
    worker.add_argument("--concurrency", type=int, default=1, help="job threads (default: 1)")
    worker.add_argument("--burst", action="store_true", help="exit once no job is due")
    worker.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="seconds between polls when no notification arrives (default: 1.0)",
    )
    worker.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="seconds running jobs get to finish after SIGTERM (default: 30)",
    )
    worker.set_defaults(handler=cmd_worker)

    status = commands.add_parser("status", help="count jobs per name and state")
    status.set_defaults(handler=cmd_status)

    failed = commands.add_parser("failed", help="list failed jobs with their last error")
    failed.add_argument("--limit", type=int, default=50, help="jobs to show (default: 50)")
    failed.add_argument("--traceback", action="store_true", help="show each last traceback")
    failed.set_defaults(handler=cmd_failed)

    retry = commands.add_parser("retry", help="make a failed job runnable again")
    retry.add_argument("job_id", type=int, metavar="ID")
    retry.set_defaults(handler=cmd_retry)

    add_ledger_commands(commands)

    demo = commands.add_parser(
        "demo",
        help="run every pattern under chaos and check its guarantee: on an embedded "
        "PostgreSQL when no address is set, else in a schema (--schema, default "
        "reliable_jobs_demo) that it creates and drops",
    )
    demo.add_argument(
        "--jobs", type=int, default=300, help="jobs across the 5 patterns (default: 300)"
    )
    demo.add_argument("--no-chaos", dest="chaos", action="store_false", help="kill no worker")
    demo.add_argument("--keep", action="store_true", help="keep the demo schema afterwards")
    demo.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    demo.add_argument("--concurrency", type=int, default=4, help="threads per worker (default: 4)")
    demo.add_argument(
        "--seed",
        type=int,
        help="seed of the kill schedule; what each kill interrupts still depends on timing",
    )
    demo.set_defaults(handler=cmd_demo)
    return parser


def _parser_with(common: argparse.ArgumentParser) -> Any:
    """Return a parser class whose instances inherit the common options."""

    class CommandParser(argparse.ArgumentParser):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("parents", [common])
            super().__init__(**kwargs)

    return CommandParser


def add_ledger_commands(commands: Any) -> None:
    ledger = commands.add_parser(
        "ledger", help="list side effects recorded by @idempotent; resolve or prune them"
    )
    ledger.add_argument(
        "--uncertain", action="store_true", help="list only effects awaiting review"
    )
    ledger.add_argument("--limit", type=int, default=100, help="rows to show (default: 100)")
    ledger.set_defaults(handler=cmd_ledger_list)
    actions = ledger.add_subparsers(metavar="ACTION")

    resolve = actions.add_parser(
        "resolve", help="settle an uncertain effect by hand and resume its job"
    )
    resolve.add_argument("key", metavar="KEY")
    outcome = resolve.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--done", action="store_true", help="the effect happened")
    outcome.add_argument(
        "--not-done", action="store_true", help="the effect did not happen: call it again"
    )
    resolve.add_argument(
        "--result", help="with --done: the JSON value the function returns from now on"
    )
    resolve.set_defaults(handler=cmd_ledger_resolve)

    prune = actions.add_parser(
        "prune", help="delete settled effects whose job is gone and that are older than a duration"
    )
    prune.add_argument(
        "--older-than",
        required=True,
        type=parse_duration,
        metavar="DURATION",
        help="age such as 30d, 12h, 45m or 90s",
    )
    prune.set_defaults(handler=cmd_ledger_prune)


def parse_duration(text: str) -> dt.timedelta:
    """Parse 30d, 12h, 45m, 90s or a number of seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}; use a number with d, h, m or s, such as 30d"
        ) from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; it must be >= 0")
    return dt.timedelta(seconds=value * units[unit])


def resolve_conninfo(options: argparse.Namespace) -> str:
    """Return --dsn, else RELIABLE_JOBS_DSN, else DATABASE_URL."""
    conninfo = options.dsn or conninfo_from_environment()
    if not conninfo:
        raise ConfigurationError(
            "no database address: pass --dsn, or set RELIABLE_JOBS_DSN or DATABASE_URL, "
            "for example postgresql://user@127.0.0.1:5432/dbname"
        )
    return str(conninfo)


def admin_app(options: argparse.Namespace) -> App:
    """Return an App for a command that works on a schema without running jobs."""
    return App(resolve_conninfo(options), schema=options.schema or DEFAULT_SCHEMA)


def load_app(spec: str) -> App:
    """Import `module:attribute` and return the App it names, or that a function returns."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"--app {spec!r} is invalid; use module:attribute, e.g. myapp:app")
    if module_name.endswith(".py"):
        raise ConfigurationError(
            f"--app {spec!r} names a file; name the module instead: "
            f"{module_name.removesuffix('.py').replace('/', '.')}:{attribute}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigurationError(
            f"--app {spec!r}: cannot import {module_name!r}: {error}"
        ) from None

    if not hasattr(module, attribute):
        raise ConfigurationError(
            f"--app {spec!r}: module {module_name} has no attribute {attribute!r}"
        )
    target = getattr(module, attribute)
    if inspect.isfunction(target) and not _required_parameters(target):
        target = target()
    if not isinstance(target, App):
        raise ConfigurationError(
            f"--app {spec!r}: {attribute!r} is a {type(target).__name__}, not a "
            "reliable_jobs.App or a function without arguments returning one"
        )
    return target


def _required_parameters(func: Any) -> list[str]:
    return [
        name
        for name, parameter in inspect.signature(func).parameters.items()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]


def cmd_migrate(options: argparse.Namespace) -> int:
    with admin_app(options) as app:
        applied = app.migrate()
    print(f"schema {app.schema}: applied {applied or 'nothing, already up to date'}")
    return 0


def cmd_worker(options: argparse.Namespace) -> int:
    if options.dsn:
        # Apps built at import time with App() and no address read it from here.
        os.environ["RELIABLE_JOBS_DSN"] = options.dsn
    app = load_app(options.app)
    if options.dsn:
        app.conninfo = options.dsn
    if options.schema and options.schema != app.schema:
        raise ConfigurationError(
            f"--schema {options.schema} differs from the app's schema {app.schema!r}, which "
            "the worker uses; drop --schema, or pass App(schema=...)"
        )
    app.run_worker(
        queues=options.queues,
        concurrency=options.concurrency,
        burst=options.burst,
        poll_interval=options.poll_interval,
        shutdown_grace=options.shutdown_grace,
    )
    return 0


def cmd_status(options: argparse.Namespace) -> int:
    with admin_app(options) as app:
        rows = admin.queue_status(app)
    header = (
        f"{'job name':<40} {'ready':>7} {'scheduled':>9} {'running':>7} {'failed':>6}  oldest ready"
    )
    print(header)
    for row in rows:
        oldest = "-" if row.oldest_ready_seconds is None else f"{row.oldest_ready_seconds:.1f} s"
        print(
            f"{row.job_name:<40} {row.ready:>7} {row.scheduled:>9} {row.running:>7} "
            f"{row.failed:>6}  {oldest}"
        )
    if not rows:
        print("(no jobs)")
    return 0


def cmd_failed(options: argparse.Namespace) -> int:
    with admin_app(options) as app:
        jobs = admin.failed_jobs(app, options.limit)
    for job in jobs:
        print(
            f"{job.id}  {job.job_name}  queue={job.queue}  attempts={job.attempts}  "
            f"failed at {job.expired_at:%Y-%m-%d %H:%M:%S %Z}"
        )
        print(f"    {job.last_error_message}")
        if options.traceback and job.last_error_backtrace:
            print("    " + job.last_error_backtrace.rstrip().replace("\n", "\n    "))
    if not jobs:
        print("(no failed jobs)")
    return 0


def cmd_retry(options: argparse.Namespace) -> int:
    with admin_app(options) as app:
        admin.retry_failed_job(app, options.job_id)
    print(f"job {options.job_id} is runnable again")
    return 0


def cmd_ledger_list(options: argparse.Namespace) -> int:
    with admin_app(options) as app:
        effects = ledger.list_effects(app, uncertain_only=options.uncertain, limit=options.limit)
    for effect in effects:
        print(
            f"{effect.key}  {effect.state}  job={effect.job_id} ({effect.job_name})  "
            f"calls={effect.calls}  updated {effect.updated_at:%Y-%m-%d %H:%M:%S %Z}"
        )
        if effect.last_error:
            print(f"    {effect.last_error}")
    if not effects:
        print("(no effects awaiting review)" if options.uncertain else "(no effects)")
    return 0


def cmd_ledger_resolve(options: argparse.Namespace) -> int:
    result = None
    if options.result is not None:
        if not options.done:
            raise ConfigurationError("--result applies only with --done")
        try:
            result = json.loads(options.result)
        except json.JSONDecodeError as error:
            raise ConfigurationError(f"--result is not valid JSON: {error}") from None
    with admin_app(options) as app:
        job_id = ledger.resolve_effect(app, options.key, done=options.done, result=result)
    outcome = "done" if options.done else "not done (the next attempt calls it again)"
    resumed = f"; job {job_id} is runnable again" if job_id is not None else ""
    print(f"effect {options.key!r} resolved as {outcome}{resumed}")
    return 0


def cmd_ledger_prune(options: argparse.Namespace) -> int:
    with admin_app(options) as app:
        deleted = ledger.prune_effects(app, options.older_than)
    print(f"deleted {deleted} settled effect(s) older than {options.older_than}")
    return 0


def cmd_demo(options: argparse.Namespace) -> int:
    demo = _import_patterns_demo()
    from .embedded import start_embedded_postgres

    if options.jobs < 5 or options.workers < 1 or options.concurrency < 1:
        raise ConfigurationError("--jobs must be >= 5, --workers and --concurrency >= 1")
    conninfo = options.dsn or conninfo_from_environment()
    where = "the database given"
    if not conninfo:
        print("No database configured: starting an embedded PostgreSQL (pgserver)...")
        conninfo = start_embedded_postgres()
        where = "an embedded PostgreSQL"
    # The demo's own progress is enough; worker processes log to nowhere.
    logging.getLogger("reliable_jobs").setLevel(logging.WARNING)

    chaos = "killing random workers with SIGKILL" if options.chaos else "without chaos"
    print(
        f"Running {options.jobs} jobs of 5 patterns on {where} with {options.workers} worker "
        f"processes, {chaos}, against a fake provider on 127.0.0.1..."
    )
    started = time.monotonic()
    schema = options.schema or "reliable_jobs_demo"
    results, counts = demo.run(
        conninfo,
        schema=schema,
        jobs=options.jobs,
        chaos=options.chaos,
        keep=options.keep,
        workers=options.workers,
        concurrency=options.concurrency,
        seed=options.seed,
        out=lambda text: print(text, end="", flush=True),
    )
    print(demo.format_table(results, counts))
    if options.keep:
        print(
            f"kept schema {schema}: inspect it with reliable-jobs --schema {schema} status "
            "(with --dsn unless an address is set); the next demo run replaces it"
        )
    held = all(result.held for result in results)
    print(
        f"finished in {time.monotonic() - started:.1f} s: "
        + ("every guarantee held" if held else "a guarantee did NOT hold; see the table")
    )
    return 0 if held else 1


def _import_patterns_demo() -> Any:
    """Import patterns.demo from the source checkout this package was installed from."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "patterns" / "demo.py").exists():
        raise ConfigurationError(
            "the demo runs the examples in patterns/, which only a source checkout has: "
            "clone the repository and install it with pip install -e '.[embedded]'"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("patterns.demo")


if __name__ == "__main__":
    sys.exit(main())
