-- The jobs table and the functions that lock, destroy and report jobs.
-- {schema} is replaced by the quoted schema name; braces are doubled.

CREATE TABLE {schema}.jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL CHECK (queue <> ''),
    job_name text NOT NULL,
    priority smallint NOT NULL,
    run_at timestamptz NOT NULL DEFAULT now(),
    args jsonb NOT NULL DEFAULT '[]',
    kwargs jsonb NOT NULL DEFAULT '{{}}',
    -- Attempts started. Incremented and committed when the job is locked,
    -- so an attempt that kills its worker is still counted.
    attempts integer NOT NULL DEFAULT 0,
    error_count integer NOT NULL DEFAULT 0,
    last_error_message text,
    last_error_backtrace text,
    -- Backend pid of the locker that started the current attempt. Cleared
    -- when the attempt reports an outcome; still set at the next lock means
    -- the previous attempt died without reporting.
    locked_by integer,
    locked_at timestamptz,
    -- Set when the job is kept as failed: no attempt follows until retried.
    expired_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX jobs_ready_idx ON {schema}.jobs (priority, run_at, id) WHERE expired_at IS NULL;

-- Advisory lock keys use the two-int form: (class of the schema, key of the
-- job). Ids 2^31 apart share a key, which only makes one wait for the other.
CREATE FUNCTION {schema}.lock_key(p_id bigint) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT (p_id & 2147483647)::integer $$;

-- Whether the session with backend pid p_locker_pid holds the job's lock.
-- Advisory locks are not MVCC, so this reads the lock table as it is now.
-- NOTE: reading pg_locks takes every lock-manager partition lock for a
-- moment and costs about 40% of a transactional job's throughput; a
-- fencing token on the job row, set at lock time, would be cheaper.
CREATE FUNCTION {schema}.owns(p_class integer, p_id bigint, p_locker_pid integer)
RETURNS boolean LANGUAGE sql VOLATILE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND objsubid = 2
          AND pid = p_locker_pid
          AND classid = p_class::oid
          AND objid = {schema}.lock_key(p_id)::oid
    )
$$;

-- Lock up to p_limit due jobs, one row at a time, in priority order.
-- pg_try_advisory_lock is called exactly once per candidate by this loop,
-- never from a WHERE clause next to LIMIT, where the planner may call it on
-- rows it then drops and leak the lock. After the lock, the row is read
-- again with FOR UPDATE: a job deleted or rescheduled since the loop's
-- snapshot is unlocked and skipped. SKIP LOCKED skips a row that another
-- transaction is deleting or rescheduling right now, instead of waiting
-- for it: two workers each deleting rows the other waits on would
-- otherwise deadlock.
CREATE FUNCTION {schema}.lock_jobs(
    p_class integer, p_queues text[], p_exclude bigint[], p_limit integer
) RETURNS TABLE (
    id bigint, queue text, job_name text, priority smallint, args jsonb, kwargs jsonb,
    attempts integer, error_count integer, previous_attempt_died boolean,
    seconds_since_enqueue double precision
) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    candidate bigint;
    previous_locker integer;
    locked_count integer := 0;
BEGIN
    IF p_limit < 1 THEN
        RETURN;
    END IF;

    FOR candidate IN
        SELECT j.id FROM {schema}.jobs AS j
        WHERE j.expired_at IS NULL AND j.run_at <= now()
          AND (p_queues IS NULL OR j.queue = ANY (p_queues))
          AND j.id <> ALL (p_exclude)
        ORDER BY j.priority, j.run_at, j.id
    LOOP
        CONTINUE WHEN NOT pg_try_advisory_lock(p_class, {schema}.lock_key(candidate));

        SELECT j.locked_by INTO previous_locker FROM {schema}.jobs AS j
        WHERE j.id = candidate AND j.expired_at IS NULL AND j.run_at <= now()
        FOR UPDATE SKIP LOCKED;

        IF NOT FOUND THEN
            PERFORM pg_advisory_unlock(p_class, {schema}.lock_key(candidate));
            CONTINUE;
        END IF;

        RETURN QUERY
        UPDATE {schema}.jobs AS j SET
            attempts = j.attempts + 1,
            error_count = j.error_count + (previous_locker IS NOT NULL)::integer,
            last_error_message = CASE WHEN previous_locker IS NULL THEN j.last_error_message
                ELSE format('attempt %s ended without reporting an outcome: its worker '
                            'was killed or lost its database connection', j.attempts) END,
            last_error_backtrace = CASE WHEN previous_locker IS NULL
                THEN j.last_error_backtrace END,
            locked_by = pg_backend_pid(),
            locked_at = now()
        WHERE j.id = candidate
        RETURNING j.id, j.queue, j.job_name, j.priority, j.args, j.kwargs, j.attempts,
                  j.error_count, previous_locker IS NOT NULL,
                  extract(epoch FROM now() - j.created_at)::double precision;

        locked_count := locked_count + 1;
        EXIT WHEN locked_count >= p_limit;
    END LOOP;
END
$$;

-- Delete a job row if the given locker still owns it. The DELETE comes
-- first so that its row lock makes a rescuer that locks the job from now on
-- wait for this transaction and then find the row gone. The ownership check
-- after it rejects a destroy whose lock was lost before the DELETE.
-- Returns the number of rows deleted (0 or 1); raises RJ001 when the
-- lock is lost, which rolls the DELETE back.
CREATE FUNCTION {schema}.destroy_job(p_class integer, p_id bigint, p_locker_pid integer)
RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    deleted integer;
BEGIN
    DELETE FROM {schema}.jobs WHERE id = p_id;
    GET DIAGNOSTICS deleted = ROW_COUNT;

    IF deleted > 0 AND NOT {schema}.owns(p_class, p_id, p_locker_pid) THEN
        RAISE EXCEPTION 'job % is no longer locked by this worker', p_id
            USING ERRCODE = 'RJ001';
    END IF;
    RETURN deleted;
END
$$;

-- Record the outcome of an attempt that did not destroy the job: a retry
-- after p_delay seconds, a permanent failure (p_expire), or a release.
-- p_refund_attempt gives the attempt back when it must not count, for
-- example when a shutdown cut it off. Returns false, changing nothing,
-- when the locker no longer owns the job.
CREATE FUNCTION {schema}.report_job(
    p_class integer, p_id bigint, p_locker_pid integer, p_delay double precision,
    p_expire boolean, p_refund_attempt boolean, p_error text, p_backtrace text
) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE {schema}.jobs AS j SET
        run_at = CASE WHEN p_delay IS NULL THEN j.run_at
                      ELSE now() + make_interval(secs => p_delay) END,
        expired_at = CASE WHEN p_expire THEN now() ELSE j.expired_at END,
        attempts = j.attempts - p_refund_attempt::integer,
        error_count = j.error_count + (p_error IS NOT NULL)::integer,
        last_error_message = coalesce(p_error, j.last_error_message),
        last_error_backtrace = CASE WHEN p_error IS NULL THEN j.last_error_backtrace
                                    ELSE p_backtrace END,
        locked_by = NULL,
        locked_at = NULL
    WHERE j.id = p_id AND {schema}.owns(p_class, p_id, p_locker_pid);
    RETURN FOUND;
END
$$;
