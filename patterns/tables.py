"""The patterns' own tables, in the app's schema, and the retry policy they share."""

from __future__ import annotations

from typing import Any

import psycopg
import tenacity
from psycopg import sql

from reliable_jobs import RetryPolicy

# Short waits so that the demo drains in seconds; a real app keeps the default.
PATTERN_RETRY = RetryPolicy(
    stop=tenacity.stop_after_attempt(25),
    wait=tenacity.wait_exponential(multiplier=0.2, max=3) + tenacity.wait_random(0, 0.3),
)

TABLES = """
CREATE TABLE IF NOT EXISTS {schema}.widgets (
    id integer PRIMARY KEY, price integer, updates integer NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS {schema}.orders (
    id integer PRIMARY KEY, charge_id text, updates integer NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS {schema}.fulfilments (
    order_id integer PRIMARY KEY, shipment_id text, updates integer NOT NULL DEFAULT 0);
"""


def create_tables(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create the patterns' tables in `schema` (the app's schema)."""
    conn.execute(sql.SQL(TABLES).format(schema=sql.Identifier(schema)))


def table(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)
