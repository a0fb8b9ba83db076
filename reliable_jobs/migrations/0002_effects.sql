-- The side-effect ledger used by @idempotent, and the functions that
-- claim and settle an effect. {schema} is replaced by the quoted schema.

-- One row per effect key. A claim is alive while its owner's session holds
-- the key's advisory lock; the row alone never says that anyone is alive.
CREATE TABLE {schema}.effects (
    key text PRIMARY KEY,
    -- Hash of the call's arguments: the same key with other arguments is
    -- an error, not a cached hit.
    fingerprint text NOT NULL,
    state text NOT NULL CHECK (state IN ('claimed', 'done', 'skipped', 'uncertain')),
    result jsonb,
    job_id bigint,
    job_name text,
    owner_pid integer,
    calls integer NOT NULL DEFAULT 0,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX effects_job_idx ON {schema}.effects (job_id);
CREATE INDEX effects_open_idx ON {schema}.effects (updated_at)
    WHERE state IN ('claimed', 'uncertain');

-- hashtext() is not stable across PostgreSQL major versions, which is fine
-- for a lock that lives no longer than one call.
CREATE FUNCTION {schema}.effect_lock_key(p_key text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtext(p_key) $$;

-- Claim an effect key for the calling session. Outcomes:
--   busy      another live session holds the key's lock; nothing changed
--   claimed   a new claim: the caller holds the lock and makes the call
--   done, skipped   settled before; result is the stored value
--   mismatch  the key was used with other arguments (stored_fingerprint)
--   uncertain a claim or uncertain outcome whose owner is gone: the caller
--             now holds the lock and must resolve it
-- The lock is kept for claimed and uncertain, released otherwise.
CREATE FUNCTION {schema}.claim_effect(
    p_class integer, p_key text, p_fingerprint text, p_job_id bigint, p_job_name text
) RETURNS TABLE (outcome text, result jsonb, stored_fingerprint text)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    existing {schema}.effects;
BEGIN
    IF NOT pg_try_advisory_lock(p_class, {schema}.effect_lock_key(p_key)) THEN
        RETURN QUERY SELECT 'busy'::text, NULL::jsonb, NULL::text;
        RETURN;
    END IF;

    INSERT INTO {schema}.effects AS e
        (key, fingerprint, state, job_id, job_name, owner_pid, calls)
    VALUES (p_key, p_fingerprint, 'claimed', p_job_id, p_job_name, pg_backend_pid(), 1)
    ON CONFLICT (key) DO NOTHING;
    IF FOUND THEN
        RETURN QUERY SELECT 'claimed'::text, NULL::jsonb, NULL::text;
        RETURN;
    END IF;

    SELECT * INTO existing FROM {schema}.effects AS e WHERE e.key = p_key FOR UPDATE;

    IF existing.fingerprint <> p_fingerprint THEN
        PERFORM pg_advisory_unlock(p_class, {schema}.effect_lock_key(p_key));
        RETURN QUERY SELECT 'mismatch'::text, NULL::jsonb, existing.fingerprint;
        RETURN;
    END IF;

    IF existing.state IN ('done', 'skipped') THEN
        PERFORM pg_advisory_unlock(p_class, {schema}.effect_lock_key(p_key));
        RETURN QUERY SELECT existing.state, existing.result, NULL::text;
        RETURN;
    END IF;

    -- Claimed or uncertain, and the lock was free: whoever claimed it died
    -- during the call, so nobody knows whether the effect happened.
    UPDATE {schema}.effects AS e SET
        state = 'uncertain',
        owner_pid = pg_backend_pid(),
        job_id = p_job_id,
        job_name = p_job_name,
        last_error = coalesce(e.last_error,
            format('the owner (backend %s) ended during call %s', e.owner_pid, e.calls)),
        updated_at = now()
    WHERE e.key = p_key;
    RETURN QUERY SELECT 'uncertain'::text, NULL::jsonb, NULL::text;
END
$$;

-- Claim an uncertain effect again in order to call it once more. The
-- caller already holds the lock from claim_effect().
CREATE FUNCTION {schema}.reclaim_effect(p_key text) RETURNS void
LANGUAGE sql VOLATILE AS $$
    UPDATE {schema}.effects SET
        state = 'claimed', owner_pid = pg_backend_pid(), calls = calls + 1, updated_at = now()
    WHERE key = p_key
$$;

-- Record how a claimed effect ended and release its lock:
--   done / skipped  with p_result; uncertain with p_error
--   released        the call failed cleanly, so the row is deleted and the
--                   next claim calls again
CREATE FUNCTION {schema}.settle_effect(
    p_class integer, p_key text, p_state text, p_result jsonb, p_error text
) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_state = 'released' THEN
        DELETE FROM {schema}.effects WHERE key = p_key;
    ELSE
        UPDATE {schema}.effects SET
            state = p_state,
            result = p_result,
            last_error = coalesce(p_error, last_error),
            owner_pid = NULL,
            updated_at = now()
        WHERE key = p_key;
    END IF;
    PERFORM pg_advisory_unlock(p_class, {schema}.effect_lock_key(p_key));
END
$$;
