-- 0004 restore epoch: change positions that survive a backup and restore.
--
-- Transactional: a new table, functions, a policy, GRANTs for monitoring.
--
-- Change positions (datastore_changelog.position_txid, datastore_consumer_positions,
-- datastore_changelog_pruned, datastore_document_versions) are
-- transaction ids (xid8) of the server that wrote them. pg_dump copies them as
-- plain values; a server restored from the dump (a fresh initdb) has its own,
-- unrelated transaction counter. Read there, an old position points into the
-- new server's future or past: a stream resuming from it would skip every new
-- change until the counter catches up, and updates of restored documents
-- (position = greatest(own id, previous position)) would wait just as long.
--
-- datastore_epoch records which server's transaction ids the positions use
-- (its system_identifier, from pg_control_system(), new at every initdb and
-- not copied by pg_dump) and a random epoch that every resume token carries.
-- On a server whose system_identifier differs (a restore onto another server),
-- change streams refuse to start (HistoryLostError, naming the restore) until
-- the migration role runs
--
--   SELECT * FROM datastore_adopt_restore();
--
-- which rebases every position into this server's transaction ids, keeping
-- the change ids (NVSentinel's resume tokens name them): each consumer resumes
-- just before the first change it had not passed, never after one (it may see
-- again a change it had passed), and gets every change written on this server
-- before the adoption. It draws a new epoch, so tokens handed out before the
-- restore are refused instead of misread. See docs/backup-restore.md.

CREATE TABLE datastore_epoch (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch              bigint NOT NULL CHECK (epoch > 0),
    system_identifier  bigint NOT NULL,
    adopted_at         timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE datastore_epoch IS
    'The server whose transaction ids the change positions use, and the epoch resume tokens carry';

INSERT INTO datastore_epoch (epoch, system_identifier)
SELECT 1 + floor(random() * 4503599627370495)::bigint, s.system_identifier
  FROM pg_control_system() AS s;

GRANT SELECT ON datastore_epoch TO nvsentinel_app;

-- Rebase the change positions of a restored database onto this server's
-- transaction ids. Run once after pg_restore onto another server, as the
-- migration role (it owns the tables), before the services start.
CREATE FUNCTION datastore_adopt_restore()
RETURNS TABLE (adopted boolean, rebased_changes bigint, rebased_consumers bigint, epoch bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    here pg_catalog.int8;
    p pg_catalog.xid8;
    n_changes pg_catalog.int8;
    n_consumers pg_catalog.int8;
    new_epoch pg_catalog.int8;
    restored_age pg_catalog.int4;
    restored_max_id pg_catalog.int8;
BEGIN
    SELECT s.system_identifier INTO here FROM pg_catalog.pg_control_system() AS s;
    PERFORM 1 FROM public.datastore_epoch AS e WHERE e.system_identifier = here;
    IF FOUND THEN
        -- Same server: its positions are already this server's transaction ids.
        RETURN QUERY SELECT false, 0::pg_catalog.int8, 0::pg_catalog.int8, e.epoch FROM public.datastore_epoch AS e;
        RETURN;
    END IF;
    LOCK TABLE public.health_events, public.maintenance_events, public.datastore_changelog,
               public.datastore_changelog_pruned, public.datastore_consumer_positions,
               public.datastore_document_versions, public.datastore_epoch
        IN ACCESS EXCLUSIVE MODE;
    -- Every rebased position is this transaction's id: below every later
    -- transaction's, and final once this one commits. Change ids stay as they
    -- are (NVSentinel's resume tokens name them), so the order inside the
    -- history becomes id order. A consumer resumes just before the first
    -- change it had not passed: never after a change it missed, at the cost of
    -- seeing again the changes of transactions that committed out of id order
    -- around its position.
    --
    -- Changes written on this server since the restore (before this adoption)
    -- have ids above every restored one (the id sequence comes with the dump),
    -- but their positions are this server's transaction ids, which cannot be
    -- compared with a consumer's old position: no consumer has passed them.
    -- They are the changes above the highest id of a change pg_restore wrote:
    -- rows not younger than the restored datastore_epoch row (one transaction
    -- with --single-transaction, as documented). A restored change updated
    -- since (NVSentinel's processed flag) is younger, and when its id is above
    -- that highest one it counts as new: seen again, never skipped.
    --
    -- A consumer's new change id: one below the first (lowest id) of its
    -- collection's changes that it had not passed, by old position or as new.
    -- When there is none, the highest id it may stand on: its own, the
    -- collection's highest, or the pruned frontier's (a consumer that had not
    -- lost history stays at or above the new frontier set below).
    p := pg_catalog.pg_current_xact_id();
    SELECT pg_catalog.age(e.xmin) INTO restored_age FROM public.datastore_epoch AS e;
    SELECT pg_catalog.max(l.id) INTO restored_max_id FROM public.datastore_changelog AS l
     WHERE pg_catalog.age(l.xmin) >= restored_age;

    UPDATE public.datastore_consumer_positions AS t
       SET position_txid = CASE WHEN m.lost THEN '0'::pg_catalog.xid8 ELSE p END,
           change_id = CASE WHEN m.lost THEN 0 ELSE m.resume_after END
      FROM (
          SELECT t2.client_owner, t2.client_name, t2.collection,
                 coalesce(
                     (SELECT pg_catalog.min(l.id) - 1 FROM public.datastore_changelog AS l
                       WHERE l.table_name = t2.collection
                         AND ((l.position_txid, l.id) > (t2.position_txid, t2.change_id)
                              OR l.id > coalesce(restored_max_id, 0))),
                     greatest(t2.change_id, f.id,
                              (SELECT pg_catalog.max(l.id) FROM public.datastore_changelog AS l
                                WHERE l.table_name = t2.collection)))
                     AS resume_after,
                 coalesce((t2.position_txid, t2.change_id) < (f.position_txid, f.id), false) AS lost
            FROM public.datastore_consumer_positions AS t2
            LEFT JOIN public.datastore_changelog_pruned AS f ON f.collection = t2.collection
      ) AS m
     WHERE (t.client_owner, t.client_name, t.collection)
         = (m.client_owner, m.client_name, m.collection);
    GET DIAGNOSTICS n_consumers = ROW_COUNT;

    UPDATE public.datastore_changelog SET position_txid = p;
    GET DIAGNOSTICS n_changes = ROW_COUNT;
    -- Each table's pruned frontier: just below its oldest retained change.
    UPDATE public.datastore_changelog_pruned AS f
       SET position_txid = p,
           id = coalesce((SELECT pg_catalog.min(l.id) - 1 FROM public.datastore_changelog AS l
                           WHERE l.table_name = f.collection), f.id);

    -- The next change of a restored document is positioned after p, not after
    -- its old position.
    UPDATE public.datastore_document_versions SET position_txid = p;

    new_epoch := 1 + pg_catalog.floor(pg_catalog.random() * 4503599627370495)::pg_catalog.int8;
    UPDATE public.datastore_epoch AS e
       SET epoch = new_epoch, system_identifier = here, adopted_at = pg_catalog.now();
    RETURN QUERY SELECT true, n_changes, n_consumers, new_epoch;
END
$$;

COMMENT ON FUNCTION datastore_adopt_restore() IS
    'After pg_restore onto another server: rebase change positions onto this server''s transaction ids and start a new token epoch';

REVOKE ALL ON FUNCTION datastore_adopt_restore() FROM PUBLIC;

-- Backups: the backup role (a member of pg_read_all_data) dumps
-- datastore_consumer_positions too. pg_read_all_data does not bypass row level security, so pg_dump runs with
-- --enable-row-security (the chart's backup.sh does) and this policy lets such
-- readers see every row; they cannot change any.
CREATE POLICY datastore_consumer_positions_read_all_data ON datastore_consumer_positions
    FOR SELECT TO pg_read_all_data
    USING (true);

-- Monitoring (the postgres-exporter's role is a member of pg_monitor): each
-- consumer's lag through the existing function, and the changelog's size and
-- age through this one. Names and counts, never documents or tokens.
CREATE FUNCTION datastore_changelog_stats()
RETURNS TABLE (collection text, changes bigint, oldest_change_at timestamptz,
               held_back_changes bigint, oldest_held_back_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT c.collection, count(l.id), min(l.changed_at),
           count(l.id) FILTER (WHERE l.position_txid >= pg_snapshot_xmin(pg_current_snapshot())),
           min(l.changed_at)
               FILTER (WHERE l.position_txid >= pg_snapshot_xmin(pg_current_snapshot()))
      FROM (VALUES ('health_events'), ('maintenance_events')) AS c (collection)
      LEFT JOIN public.datastore_changelog AS l ON l.table_name = c.collection
     GROUP BY c.collection
     ORDER BY c.collection
$$;

COMMENT ON FUNCTION datastore_changelog_stats() IS
    'Per collection: retained changes, the oldest, and committed changes held back by an older open transaction';

REVOKE ALL ON FUNCTION datastore_changelog_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION datastore_changelog_stats() TO nvsentinel_app, pg_monitor;
GRANT EXECUTE ON FUNCTION datastore_consumer_lag() TO pg_monitor;
