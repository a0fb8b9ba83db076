"""Create and upgrade the database schema from numbered migrations."""

from __future__ import annotations

import logging
import re
import zlib
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from .errors import InvalidArgumentError, SchemaNotMigratedError, translated_database_errors

logger = logging.getLogger(__name__)

# Key of the transaction-level advisory lock that serialises migrations.
# Two processes that migrate at once would otherwise race on CREATE SCHEMA.
_MIGRATION_LOCK_CLASS = 0x524A4D47  # "RJMG"

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_schema_name(schema: str) -> str:
    """Return the schema name, or raise if PostgreSQL would fold or reject it."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
        raise InvalidArgumentError(
            f"schema={schema!r} is invalid; use 1 to 63 lowercase letters, digits "
            "and underscores, starting with a letter or underscore"
        )
    return schema


def lock_class(schema: str) -> int:
    """Return the advisory lock class (a positive 31-bit int) of a schema's jobs."""
    return zlib.crc32(schema.encode()) & 0x7FFFFFFF


def effect_lock_class(schema: str) -> int:
    """Return the advisory lock class of a schema's side-effect ledger keys."""
    return zlib.crc32(f"{schema}:effects".encode()) & 0x7FFFFFFF


def migrations() -> list[tuple[int, str]]:
    """Return the numbered migrations shipped with the package, in order."""
    found = []
    for entry in resources.files("reliable_jobs.migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_\w+\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    return sorted(found)


def check_schema_version(conn: psycopg.Connection[Any], schema: str) -> None:
    """Raise SchemaNotMigratedError unless the schema has every shipped migration."""
    query = sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_migrations").format(
        sql.Identifier(schema)
    )
    with translated_database_errors(schema):
        row = conn.execute(query).fetchone()
    applied = row[0] if row else 0
    latest = migrations()[-1][0]
    if applied < latest:
        raise SchemaNotMigratedError(
            schema, f"it is at migration {applied}, this version needs {latest}"
        )


def migrate(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    """Apply the migrations that the schema lacks; return their numbers.

    Runs in one transaction that holds an advisory lock, so two processes
    migrating at once apply each migration exactly once.
    """
    schema_id = sql.Identifier(schema)
    applied_now: list[int] = []

    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)", (_MIGRATION_LOCK_CLASS, lock_class(schema))
        )
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema_id))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(schema_id)
        )
        rows = conn.execute(
            sql.SQL("SELECT version FROM {}.schema_migrations").format(schema_id)
        ).fetchall()
        done = {row[0] for row in rows}

        for version, text in migrations():
            if version in done:
                continue
            conn.execute(sql.SQL(text).format(schema=schema_id))
            conn.execute(
                sql.SQL("INSERT INTO {}.schema_migrations (version) VALUES (%s)").format(schema_id),
                (version,),
            )
            applied_now.append(version)

    if applied_now:
        logger.info(
            "Applied migrations %s to schema %s",
            applied_now,
            schema,
            extra={"action": "migrate", "schema": schema},
        )
    return applied_now
