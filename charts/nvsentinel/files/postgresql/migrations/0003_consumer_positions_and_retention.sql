-- 0003 consumer positions and changelog retention.
--
-- Transactional: new objects only.
--
-- datastore_consumer_positions holds one position per consumer of this
-- project's streams (client_name) and collection: the (position_txid,
-- change_id) cursor of the last change the consumer handled (see
-- 0002_change_capture.sql). NVSentinel's resume_tokens table (0001) keeps its
-- own shape and belongs to NVSentinel's watchers. Row level security lets a
-- login role see and change only the rows it owns (client_owner =
-- current_user); the functions below are SECURITY DEFINER and see every row.
--
-- datastore_changelog_prune(max_age) deletes, per collection, the changes that
-- every live consumer has passed and that are older than max_age. A consumer
-- whose position was not stored for max_age is expired first: it no longer
-- holds changes back, and when it returns below the pruned frontier
-- (datastore_changelog_pruned, raised by the deletion itself) its reader raises
-- the history-lost error.
--
-- Who may prune: only the pruner role nvsentinel_pruner (a LOGIN role made by
-- bootstrap.sql, whose certificate only the prune CronJob mounts) and the
-- owner; the services' role nvsentinel_app may not, since pruning expires other
-- services' consumers. Whatever the caller, max_age must be at least
-- 1 hour: a smaller one would erase the history every consumer is reading.
--
-- Every SECURITY DEFINER function here and in 0002/0004 runs with
-- search_path = pg_catalog, public, pg_temp (pg_temp last: not naming it would
-- search the caller's temporary schema first for types and relations) and
-- names its types and relations schema-qualified.

CREATE TABLE datastore_consumer_positions (
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

COMMENT ON TABLE datastore_consumer_positions IS
    'Change stream position (position_txid, change_id) per consumer and collection; rows visible to their owner only';

ALTER TABLE datastore_consumer_positions ENABLE ROW LEVEL SECURITY;

CREATE POLICY datastore_consumer_positions_own_rows ON datastore_consumer_positions
    FOR ALL TO nvsentinel_app
    USING (client_owner = current_user)
    WITH CHECK (client_owner = current_user);

GRANT SELECT, INSERT, UPDATE, DELETE ON datastore_consumer_positions TO nvsentinel_app;

CREATE FUNCTION datastore_changelog_prune(max_age interval)
RETURNS TABLE (collection text, deleted_changes bigint, expired_consumers bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    cutoff pg_catalog.timestamptz;
    coll pg_catalog.text;
    low_txid pg_catalog.xid8;
    low_id pg_catalog.int8;
    n_deleted pg_catalog.int8;
    n_expired pg_catalog.int8;
BEGIN
    IF max_age IS NULL OR max_age < '1 hour'::pg_catalog.interval THEN
        RAISE EXCEPTION 'max_age must be at least 1 hour, got %', max_age
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the minimum keeps a prune from erasing the history consumers are reading';
    END IF;
    cutoff := pg_catalog.now() - max_age;
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('nvsentinel.datastore_changelog_prune'));
    FOR coll IN
        SELECT c.name FROM (
            SELECT DISTINCT l.table_name::pg_catalog.text AS name FROM public.datastore_changelog AS l
            UNION SELECT t.collection FROM public.datastore_consumer_positions AS t) AS c
        ORDER BY 1
    LOOP
        UPDATE public.datastore_consumer_positions AS t
           SET expired_at = pg_catalog.now()
         WHERE t.collection = coll AND t.expired_at IS NULL AND t.updated_at < cutoff;
        GET DIAGNOSTICS n_expired = ROW_COUNT;

        low_txid := NULL;
        low_id := NULL;
        SELECT t.position_txid, t.change_id INTO low_txid, low_id
          FROM public.datastore_consumer_positions AS t
         WHERE t.collection = coll AND t.expired_at IS NULL
         ORDER BY t.position_txid, t.change_id
         LIMIT 1;

        DELETE FROM public.datastore_changelog AS l
         WHERE l.table_name = coll
           AND l.changed_at < cutoff
           AND (low_txid IS NULL OR (l.position_txid, l.id) <= (low_txid, low_id));
        GET DIAGNOSTICS n_deleted = ROW_COUNT;

        collection := coll;
        deleted_changes := n_deleted;
        expired_consumers := n_expired;
        RETURN NEXT;
    END LOOP;
END
$$;

COMMENT ON FUNCTION datastore_changelog_prune(interval) IS
    'Expire consumers silent for max_age (at least 1 hour), then delete changes older than max_age that every live consumer has passed';

-- Every consumer's progress, for health checks: names and lag, not positions.
CREATE FUNCTION datastore_consumer_lag()
RETURNS TABLE (client_owner name, client_name text, collection text, updated_at timestamptz,
               expired boolean, pending_changes bigint, oldest_pending_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT t.client_owner, t.client_name, t.collection, t.updated_at, t.expired_at IS NOT NULL,
           p.pending, p.oldest
      FROM public.datastore_consumer_positions AS t
      CROSS JOIN LATERAL (
          SELECT pg_catalog.count(*) AS pending, pg_catalog.min(l.changed_at) AS oldest
            FROM public.datastore_changelog AS l
           WHERE l.table_name = t.collection
             AND (l.position_txid, l.id) > (t.position_txid, t.change_id)
      ) AS p
     ORDER BY t.collection, t.client_name, t.client_owner
$$;

REVOKE ALL ON FUNCTION datastore_changelog_prune(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION datastore_consumer_lag() FROM PUBLIC;
-- Pruning is the pruner's (see above), not the services'. Roles are cluster
-- objects that bootstrap.sql makes, never a migration: the GRANT is made only
-- when the role exists (bootstrap.sql creates it before the migrations run).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'nvsentinel_pruner') THEN
        GRANT EXECUTE ON FUNCTION public.datastore_changelog_prune(interval) TO nvsentinel_pruner;
    END IF;
END
$$;
GRANT EXECUTE ON FUNCTION datastore_consumer_lag() TO nvsentinel_app;

-- Health checks running as the application read this project's schema history.
GRANT SELECT ON nvsentinel_store_migrations TO nvsentinel_app;
