"""Every SQL statement the package runs, composed for a given schema.

Parameters are always bound; the schema name is quoted with sql.Identifier.
Each query is built once per schema and cached.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from psycopg import sql

Query = Callable[[str], sql.Composed]


def _query(text: str) -> Query:
    @functools.cache
    def compose(schema: str) -> sql.Composed:
        return sql.SQL(text).format(schema=sql.Identifier(schema))

    return compose


# Insert one job; the notification is sent when the transaction commits.
enqueue_one = _query(
    """
    WITH inserted AS (
        INSERT INTO {schema}.jobs (queue, job_name, priority, run_at, args, kwargs)
        VALUES (%(queue)s, %(job_name)s, %(priority)s,
                coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay)s)),
                %(args)s::jsonb, %(kwargs)s::jsonb)
        RETURNING id, queue
    )
    SELECT id, pg_notify(%(channel)s, queue) FROM inserted
    """
)

# Insert many jobs of one kind from parallel arrays of arguments.
enqueue_many = _query(
    """
    WITH inserted AS (
        INSERT INTO {schema}.jobs (queue, job_name, priority, run_at, args, kwargs)
        SELECT %(queue)s, %(job_name)s, %(priority)s,
               coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay)s)),
               a::jsonb, k::jsonb
        FROM unnest(%(args)s::text[], %(kwargs)s::text[]) WITH ORDINALITY AS t(a, k, n)
        ORDER BY n
        RETURNING id
    ), notified AS (
        SELECT pg_notify(%(channel)s, %(queue)s)
    )
    SELECT inserted.id FROM inserted CROSS JOIN notified ORDER BY inserted.id
    """
)

# Lock due jobs for a locker connection, see lock_jobs() in the migrations.
lock_jobs = _query(
    """
    SELECT * FROM {schema}.lock_jobs(%(class)s, %(queues)s, %(exclude)s, %(limit)s)
    """
)

unlock_jobs = _query(
    """
    SELECT count(*) FILTER (WHERE unlocked) FROM (
        SELECT pg_advisory_unlock(%(class)s, {schema}.lock_key(id)) AS unlocked
        FROM unnest(%(ids)s::bigint[]) AS id
    ) AS t
    """
)

# Advisory locks of this schema's class held by the current session.
held_locks = _query(
    """
    SELECT objid::bigint FROM pg_locks
    WHERE locktype = 'advisory' AND objsubid = 2 AND granted
      AND pid = pg_backend_pid() AND classid = %(class)s::oid
    """
)

unlock_key = _query(
    """
    SELECT pg_advisory_unlock(%(class)s, %(key)s::integer)
    """
)

destroy_job = _query(
    """
    SELECT {schema}.destroy_job(%(class)s, %(id)s, %(locker_pid)s)
    """
)

report_job = _query(
    """
    SELECT {schema}.report_job(%(class)s, %(id)s, %(locker_pid)s, %(delay)s, %(expire)s,
                               %(refund)s, %(error)s, %(backtrace)s)
    """
)

owns = _query(
    """
    SELECT {schema}.owns(%(class)s, %(id)s, %(locker_pid)s)
    """
)

# Counts per job name for the status command. A job is running when some
# session holds its advisory lock, whatever its locked_by column contains.
status = _query(
    """
    WITH running AS (
        SELECT objid FROM pg_locks
        WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid = %(class)s::oid
    )
    SELECT j.job_name,
           count(*) FILTER (WHERE j.expired_at IS NULL AND r.objid IS NULL
                            AND j.run_at <= now()) AS ready,
           count(*) FILTER (WHERE j.expired_at IS NULL AND r.objid IS NULL
                            AND j.run_at > now()) AS scheduled,
           count(*) FILTER (WHERE j.expired_at IS NULL AND r.objid IS NOT NULL) AS running,
           count(*) FILTER (WHERE j.expired_at IS NOT NULL) AS failed,
           extract(epoch FROM now() - min(j.run_at) FILTER (
               WHERE j.expired_at IS NULL AND r.objid IS NULL AND j.run_at <= now()
           ))::double precision AS oldest_ready_seconds
    FROM {schema}.jobs AS j
    LEFT JOIN running AS r ON r.objid = {schema}.lock_key(j.id)::oid
    GROUP BY j.job_name
    ORDER BY j.job_name
    """
)

failed_jobs = _query(
    """
    SELECT id, job_name, queue, attempts, error_count, expired_at, last_error_message,
           last_error_backtrace
    FROM {schema}.jobs
    WHERE expired_at IS NOT NULL
    ORDER BY expired_at DESC, id DESC
    LIMIT %(limit)s
    """
)

# Make a failed job runnable again with a fresh attempt budget.
retry_failed = _query(
    """
    UPDATE {schema}.jobs
    SET expired_at = NULL, run_at = now(), attempts = 0, locked_by = NULL, locked_at = NULL
    WHERE id = %(id)s AND expired_at IS NOT NULL
    RETURNING id
    """
)

job_exists = _query(
    """
    SELECT expired_at IS NOT NULL FROM {schema}.jobs WHERE id = %(id)s
    """
)

claim_effect = _query(
    """
    SELECT * FROM {schema}.claim_effect(%(class)s, %(key)s, %(fingerprint)s, %(job_id)s,
                                        %(job_name)s)
    """
)

reclaim_effect = _query(
    """
    SELECT {schema}.reclaim_effect(%(key)s)
    """
)

settle_effect = _query(
    """
    SELECT {schema}.settle_effect(%(class)s, %(key)s, %(state)s, %(result)s::jsonb, %(error)s)
    """
)

# Used when the claiming connection broke after the call: record the
# outcome unless another claim has taken the key since.
settle_orphaned_effect = _query(
    """
    UPDATE {schema}.effects
    SET state = %(state)s, result = %(result)s::jsonb, owner_pid = NULL, updated_at = now()
    WHERE key = %(key)s AND state IN ('claimed', 'uncertain') AND owner_pid = %(owner_pid)s
    """
)

list_effects = _query(
    """
    SELECT key, state, job_id, job_name, calls, last_error, result, updated_at
    FROM {schema}.effects
    WHERE %(states)s::text[] IS NULL OR state = ANY (%(states)s::text[])
    ORDER BY updated_at DESC, key
    LIMIT %(limit)s
    """
)

try_effect_lock = _query(
    """
    SELECT pg_try_advisory_lock(%(class)s, {schema}.effect_lock_key(%(key)s))
    """
)

# Settle an open effect by hand (the caller holds its lock): done keeps the
# given result, not done deletes the row so that the next claim calls again.
resolve_effect_done = _query(
    """
    UPDATE {schema}.effects
    SET state = 'done', result = %(result)s::jsonb, owner_pid = NULL, updated_at = now(),
        last_error = concat_ws(' ', last_error, '(resolved by hand: done)')
    WHERE key = %(key)s AND state IN ('claimed', 'uncertain')
    RETURNING job_id
    """
)

resolve_effect_not_done = _query(
    """
    DELETE FROM {schema}.effects
    WHERE key = %(key)s AND state IN ('claimed', 'uncertain')
    RETURNING job_id
    """
)

effect_state = _query(
    """
    SELECT state FROM {schema}.effects WHERE key = %(key)s
    """
)

release_effect_lock = _query(
    """
    SELECT pg_advisory_unlock(%(class)s, {schema}.effect_lock_key(%(key)s))
    """
)

# Make a job held for review runnable again, with a fresh attempt budget.
resume_job = _query(
    """
    UPDATE {schema}.jobs
    SET expired_at = NULL, run_at = now(), attempts = 0, locked_by = NULL, locked_at = NULL
    WHERE id = %(id)s AND expired_at IS NOT NULL
    RETURNING id
    """
)

# Delete settled effects older than the cutoff whose claiming job is gone:
# a job still in the queue may run again and must find its key.
prune_effects = _query(
    """
    DELETE FROM {schema}.effects AS e
    WHERE e.state IN ('done', 'skipped')
      AND e.updated_at < now() - make_interval(secs => %(older_than)s)
      AND NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j WHERE j.id = e.job_id)
    """
)

# Delete, unlock and lock in one call; see worker_cycle() in the migrations.
worker_cycle = _query(
    """
    SELECT * FROM {schema}.worker_cycle(%(class)s, %(destroy)s, %(unlock)s, %(queues)s,
                                        %(exclude)s, %(limit)s)
    """
)
