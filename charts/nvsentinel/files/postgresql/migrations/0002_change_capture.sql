-- 0002 change capture: datastore_changelog and the triggers that fill it.
--
-- Transactional: new objects only.
--
-- Every INSERT, UPDATE and DELETE of health_events and maintenance_events
-- adds one row per changed document to datastore_changelog, in the writing
-- transaction, with:
--   txid             the writing (top-level) transaction, pg_current_xact_id()
--   position_txid    txid, or the document's previous position_txid if that is
--                    higher (a transaction can get its id before it waits for
--                    the row lock of a transaction with a higher id); so a
--                    document's changes are in version order in the history
--   id               BIGSERIAL, the order of changes inside a transaction
--   operation        insert | update | replace | delete (a writer marks a
--                    whole-document replacement with
--                    SET LOCAL nvsentinel.change_operation = 'replace')
--   version          the document's version after the change (before, for a delete)
--   document         the document after the change (NULL for delete)
--   document_before  the document before the change (update, replace, delete)
--   changed_at       clock time of the change
-- updateDescription (updatedFields / removedFields) is computed by the reader
-- (nvsentinel_store.changestream) from document_before and document, so
-- writers pay nothing for it.
--
-- Readers page through the changelog with the cursor (position_txid, id) and
-- read only rows whose position_txid is below the visibility horizon
-- pg_snapshot_xmin(pg_current_snapshot()) of their own statement: every
-- transaction below it has ended, and a running transaction writes rows with
-- position_txid >= its own id >= the horizon, so no row can appear there later.
-- See src/nvsentinel_store/changestream.py for the argument.
--
-- The capture functions are SECURITY DEFINER (owned by the migration role), so
-- the application role needs no write access to the changelog: it can read it,
-- never forge or erase it.

CREATE TABLE datastore_changelog (
    id               bigserial PRIMARY KEY,
    txid             xid8 NOT NULL DEFAULT pg_current_xact_id(),
    position_txid    xid8 NOT NULL,
    collection       text NOT NULL,
    operation        text NOT NULL CHECK (operation IN ('insert', 'update', 'replace', 'delete')),
    document_id      text NOT NULL,
    version          bigint NOT NULL,
    document         jsonb,
    document_before  jsonb,
    changed_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

COMMENT ON TABLE datastore_changelog IS
    'Change capture of the event tables; read in (position_txid, id) order below pg_snapshot_xmin(pg_current_snapshot())';

-- The readers' path: one collection, in cursor order.
CREATE INDEX datastore_changelog_cursor_idx ON datastore_changelog (collection, position_txid, id);
-- Retention by age.
CREATE INDEX datastore_changelog_changed_at_idx ON datastore_changelog (changed_at);

-- Per collection, the highest (position_txid, id) position deleted by
-- pruning: a resume position below it has lost history.
CREATE TABLE datastore_changelog_pruned (
    collection     text PRIMARY KEY,
    position_txid  xid8 NOT NULL,
    id             bigint NOT NULL,
    pruned_at      timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION datastore_change_operation()
RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN current_setting('nvsentinel.change_operation', true) = 'replace'
                THEN 'replace' ELSE 'update' END
$$;

CREATE FUNCTION datastore_capture_insert()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
BEGIN
    INSERT INTO public.datastore_changelog
        (position_txid, collection, operation, document_id, version, document)
    SELECT n.change_position_txid, TG_TABLE_NAME, 'insert', n.id, n.version, n.document
      FROM new_rows AS n;
    RETURN NULL;
END
$$;

CREATE FUNCTION datastore_capture_update()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
BEGIN
    INSERT INTO public.datastore_changelog
        (position_txid, collection, operation, document_id, version, document, document_before)
    SELECT n.change_position_txid, TG_TABLE_NAME, public.datastore_change_operation(),
           n.id, n.version, n.document, o.document
      FROM new_rows AS n
      JOIN old_rows AS o ON o.id = n.id;
    RETURN NULL;
END
$$;

CREATE FUNCTION datastore_capture_delete()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
BEGIN
    INSERT INTO public.datastore_changelog
        (position_txid, collection, operation, document_id, version, document_before)
    SELECT greatest(pg_current_xact_id(), o.change_position_txid), TG_TABLE_NAME, 'delete',
           o.id, o.version, o.document
      FROM old_rows AS o;
    RETURN NULL;
END
$$;

CREATE TRIGGER health_events_capture_insert
    AFTER INSERT ON health_events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datastore_capture_insert();
CREATE TRIGGER health_events_capture_update
    AFTER UPDATE ON health_events REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datastore_capture_update();
CREATE TRIGGER health_events_capture_delete
    AFTER DELETE ON health_events REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datastore_capture_delete();

CREATE TRIGGER maintenance_events_capture_insert
    AFTER INSERT ON maintenance_events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datastore_capture_insert();
CREATE TRIGGER maintenance_events_capture_update
    AFTER UPDATE ON maintenance_events REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datastore_capture_update();
CREATE TRIGGER maintenance_events_capture_delete
    AFTER DELETE ON maintenance_events REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datastore_capture_delete();

REVOKE ALL ON FUNCTION datastore_capture_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION datastore_capture_update() FROM PUBLIC;
REVOKE ALL ON FUNCTION datastore_capture_delete() FROM PUBLIC;

-- The application reads the changelog and the pruning frontier; it never writes them.
GRANT SELECT ON datastore_changelog, datastore_changelog_pruned TO nvsentinel_app;
