-- One round trip per worker loop: delete the jobs that finished and left
-- their row to the worker, lock new ones, then release the locks of the
-- finished jobs. The whole call is one transaction, so a batch of
-- finished jobs costs one commit. The unlocks come last because they take
-- effect at once, even if the transaction then fails: an error in the
-- locking must not free a finished job whose deletion rolls back.
-- {schema} is replaced by the quoted schema name.

CREATE FUNCTION {schema}.worker_cycle(
    p_class integer, p_destroy bigint[], p_unlock bigint[],
    p_queues text[], p_exclude bigint[], p_limit integer
) RETURNS TABLE (
    kind text, id bigint, queue text, job_name text, priority smallint, args jsonb,
    kwargs jsonb, attempts integer, error_count integer, previous_attempt_died boolean,
    seconds_since_enqueue double precision
) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    missing bigint[];
BEGIN
    -- The calling session holds the lock of every job in p_destroy, which
    -- is why no ownership check is needed here.
    WITH deleted AS (
        DELETE FROM {schema}.jobs AS j WHERE j.id = ANY (p_destroy) RETURNING j.id
    )
    SELECT coalesce(array_agg(wanted), '{{}}') INTO missing
    FROM unnest(p_destroy) AS wanted
    WHERE NOT EXISTS (SELECT 1 FROM deleted WHERE deleted.id = wanted);

    RETURN QUERY SELECT 'missing'::text, gone, NULL::text, NULL::text, NULL::smallint,
        NULL::jsonb, NULL::jsonb, NULL::integer, NULL::integer, NULL::boolean,
        NULL::double precision
    FROM unnest(missing) AS gone;

    -- The finished jobs are excluded: this session still holds their locks,
    -- and advisory locks are re-entrant.
    RETURN QUERY SELECT 'locked'::text, l.*
    FROM {schema}.lock_jobs(p_class, p_queues, p_exclude || p_unlock, p_limit) AS l;

    PERFORM pg_advisory_unlock(p_class, {schema}.lock_key(finished))
    FROM unnest(p_unlock) AS finished;
END
$$;
