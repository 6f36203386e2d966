-- 0003 resume tokens and changelog retention.
--
-- Transactional: new objects only.
--
-- resume_tokens holds one position per consumer (client_name) and collection:
-- the (position_txid, change_id) cursor of the last change the consumer
-- handled (see 0002_change_capture.sql). Row
-- level security lets a login role see and change only the rows it owns
-- (client_owner = current_user); the functions below are SECURITY DEFINER and
-- see every row.
--
-- datastore_changelog_prune(max_age) deletes, per collection, the changes that
-- every live consumer has passed and that are older than max_age. A consumer
-- whose token was not stored for max_age is expired first: it no longer holds
-- changes back, and when it returns with a position below the pruned frontier
-- (datastore_changelog_pruned) its reader raises the history-lost error.

CREATE TABLE resume_tokens (
    client_owner   name NOT NULL DEFAULT current_user,
    client_name    text NOT NULL CHECK (client_name <> ''),
    collection     text NOT NULL,
    position_txid  xid8 NOT NULL,
    change_id      bigint NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    expired_at     timestamptz,
    PRIMARY KEY (client_owner, client_name, collection)
);

COMMENT ON TABLE resume_tokens IS
    'Change stream position (position_txid, change_id) per consumer and collection; rows visible to their owner only';

ALTER TABLE resume_tokens ENABLE ROW LEVEL SECURITY;

CREATE POLICY resume_tokens_own_rows ON resume_tokens
    FOR ALL TO nvsentinel_app
    USING (client_owner = current_user)
    WITH CHECK (client_owner = current_user);

GRANT SELECT, INSERT, UPDATE, DELETE ON resume_tokens TO nvsentinel_app;

CREATE FUNCTION datastore_changelog_prune(max_age interval)
RETURNS TABLE (collection text, deleted_changes bigint, expired_consumers bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    cutoff timestamptz;
    coll text;
    low_txid xid8;
    low_id bigint;
    top_txid xid8;
    top_id bigint;
    n_deleted bigint;
    n_expired bigint;
BEGIN
    IF max_age IS NULL OR max_age < interval '0' THEN
        RAISE EXCEPTION 'max_age must be a non-negative interval, got %', max_age
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cutoff := now() - max_age;
    PERFORM pg_advisory_xact_lock(hashtext('nvsentinel.datastore_changelog_prune'));
    FOR coll IN
        SELECT c.collection FROM (
            SELECT DISTINCT l.collection FROM public.datastore_changelog AS l
            UNION SELECT t.collection FROM public.resume_tokens AS t) AS c
        ORDER BY 1
    LOOP
        UPDATE public.resume_tokens AS t
           SET expired_at = now()
         WHERE t.collection = coll AND t.expired_at IS NULL AND t.updated_at < cutoff;
        GET DIAGNOSTICS n_expired = ROW_COUNT;

        low_txid := NULL;
        low_id := NULL;
        SELECT t.position_txid, t.change_id INTO low_txid, low_id
          FROM public.resume_tokens AS t
         WHERE t.collection = coll AND t.expired_at IS NULL
         ORDER BY t.position_txid, t.change_id
         LIMIT 1;

        top_txid := NULL;
        top_id := NULL;
        WITH gone AS (
            DELETE FROM public.datastore_changelog AS l
             WHERE l.collection = coll
               AND l.changed_at < cutoff
               AND (low_txid IS NULL OR (l.position_txid, l.id) <= (low_txid, low_id))
            RETURNING l.position_txid, l.id
        ), top AS (
            SELECT g.position_txid, g.id FROM gone AS g
             ORDER BY g.position_txid DESC, g.id DESC LIMIT 1
        )
        SELECT (SELECT count(*) FROM gone), top.position_txid, top.id
          INTO n_deleted, top_txid, top_id
          FROM (SELECT 1) AS one LEFT JOIN top ON true;

        IF n_deleted > 0 THEN
            INSERT INTO public.datastore_changelog_pruned AS p (collection, position_txid, id)
            VALUES (coll, top_txid, top_id)
            ON CONFLICT ON CONSTRAINT datastore_changelog_pruned_pkey DO UPDATE
               SET position_txid = excluded.position_txid, id = excluded.id, pruned_at = now()
             WHERE (excluded.position_txid, excluded.id) > (p.position_txid, p.id);
        END IF;

        collection := coll;
        deleted_changes := n_deleted;
        expired_consumers := n_expired;
        RETURN NEXT;
    END LOOP;
END
$$;

COMMENT ON FUNCTION datastore_changelog_prune(interval) IS
    'Expire consumers silent for max_age, then delete changes older than max_age that every live consumer has passed';

-- Every consumer's progress, for health checks: names and lag, not tokens.
CREATE FUNCTION datastore_consumer_lag()
RETURNS TABLE (client_owner name, client_name text, collection text, updated_at timestamptz,
               expired boolean, pending_changes bigint, oldest_pending_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT t.client_owner, t.client_name, t.collection, t.updated_at, t.expired_at IS NOT NULL,
           p.pending, p.oldest
      FROM public.resume_tokens AS t
      CROSS JOIN LATERAL (
          SELECT count(*) AS pending, min(l.changed_at) AS oldest
            FROM public.datastore_changelog AS l
           WHERE l.collection = t.collection
             AND (l.position_txid, l.id) > (t.position_txid, t.change_id)
      ) AS p
     ORDER BY t.collection, t.client_name, t.client_owner
$$;

REVOKE ALL ON FUNCTION datastore_changelog_prune(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION datastore_consumer_lag() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION datastore_changelog_prune(interval) TO nvsentinel_app;
GRANT EXECUTE ON FUNCTION datastore_consumer_lag() TO nvsentinel_app;

-- Health checks running as the application read the schema version. The
-- applier creates schema_migrations before the first migration runs.
DO $$
BEGIN
    IF to_regclass('public.schema_migrations') IS NOT NULL THEN
        GRANT SELECT ON public.schema_migrations TO nvsentinel_app;
    END IF;
END
$$;
