-- 0002 change capture: lossless change positions and typed extraction, on top of NVSentinel's schema.
--
-- Transactional. Everything here is additive: columns NVSentinel's statements
-- never name, triggers and functions of our own. NVSentinel's change log
-- trigger log_table_changes (0001) stays the one writer of datastore_changelog.
--
-- Change positions. NVSentinel's watchers read datastore_changelog by
-- (changed_at, id), which loses changes: changed_at is the transaction's start
-- time and ids are drawn before commit, so a change that commits late appears
-- behind a cursor that already passed it. This project's streams read by
-- (position_txid, id) below the visibility horizon
-- pg_snapshot_xmin(pg_current_snapshot()) instead (see
-- src/nvsentinel_store/changestream.py for the argument):
--   position_txid  the writing transaction's id, or the document's previous
--                  position if that is higher, so that one document's changes
--                  are in version order.
--   version        per document: 1 on insert, +1 on every update (the
--                  version deleted, for a delete).
-- Both come from datastore_document_versions, one row per document, which
-- the trigger datastore_changelog_position reads and advances under the
-- document's row lock (log_table_changes runs while the writer holds it).
-- They live there, not in the event tables, because NVSentinel's watchers hand
-- out whole rows of maintenance_events as documents: a column of ours there
-- would show in their change events.
--   replaced       an UPDATE that replaced the whole document (a writer says so
--                  with SET LOCAL nvsentinel.change_operation = 'replace').
--
-- datastore_changelog accepts only rows written by a trigger: the services'
-- role needs INSERT on it because log_table_changes runs as the writer, but it
-- cannot forge a change by inserting one itself.
--
-- Every deletion from datastore_changelog (this project's pruning or
-- NVSentinel's cleanup_changelog) raises the per-table pruned frontier
-- datastore_changelog_pruned: a stream resuming below it has lost history and
-- says so rather than skipping changes silently.
--
-- Typed extraction. health_events gets typed columns of our own for the
-- queries this project serves (agent, is_fatal, ...), filled from the document
-- by a BEFORE trigger (NVSentinel's watchers read only the document of a
-- health event, never these). maintenance_events gets none: NVSentinel's
-- columns and the document serve its queries. NVSentinel's own columns
-- (node_name, node_quarantined, ...) are NVSentinel's to write: the trigger
-- fills them from the document only on a document-only write, which
-- NVSentinel's statements never are (they name node_name / event_id when they
-- insert and set updated_at when they update):
--   INSERT  health_events without node_name, maintenance_events without
--           event_id: every typed column from the document.
--   UPDATE  that changes only the document: every typed column from the new
--           document, updated_at = now().
-- Otherwise only our own columns follow the document, and only when the
-- writer changed the document: a column-only UPDATE (SET status = ...) stays
-- exactly as written. One exception: health_events.created_at is taken from
-- the document's createdAt on every insert, NVSentinel's too: its inserts never
-- name created_at, so its default only stands in for the document's time.
--
-- Both key spellings are read everywhere: the lower-case one of the Go BSON
-- driver (`nodename`) and the camelCase one of Go's JSON encoding (`nodeName`).
-- Booleans are read plain (true) and in NVSentinel's wrapper form
-- ({"value": true}). A value that cannot be read (an impossible date, a number
-- out of range) leaves its column NULL and the document is stored as written.

-- A scalar JSON value as text: strings unquoted, numbers and booleans as
-- written; NULL for null, objects and arrays.
CREATE FUNCTION nvsentinel_json_text(v jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(v) IN ('string', 'number', 'boolean') THEN v #>> '{}' END
$$;

-- A boolean from true, "true", {"value": true} (NVSentinel's wrapper); else NULL.
CREATE FUNCTION nvsentinel_json_bool(v jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN jsonb_typeof(v) = 'boolean' THEN (v #>> '{}')::boolean
        WHEN jsonb_typeof(v) = 'string' AND lower(v #>> '{}') IN ('true', 'false')
            THEN lower(v #>> '{}')::boolean
        WHEN jsonb_typeof(v) = 'object' AND jsonb_typeof(v -> 'value') = 'boolean'
            THEN (v ->> 'value')::boolean
    END
$$;

-- A JSON integer (or a string of digits) as integer; else NULL.
CREATE FUNCTION nvsentinel_json_int(v jsonb)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN jsonb_typeof(v) IN ('number', 'string') AND (v #>> '{}') ~ '^-?[0-9]{1,9}$'
            THEN (v #>> '{}')::integer
    END
$$;

-- Seconds since the epoch as timestamptz, within years 1-9999; else NULL.
CREATE FUNCTION nvsentinel_epoch_timestamptz(seconds numeric)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN seconds BETWEEN -62135596800 AND 253402300799
                THEN to_timestamp(seconds::double precision) END
$$;

-- An RFC 3339 / ISO 8601 date-time string as timestamptz; NULL for anything
-- PostgreSQL would refuse (the 30th of February, hour 25, year 0), checked
-- before the cast so that a bad value never fails the write.
--
-- The timestamp readers are PL/pgSQL, not inlined SQL: inlining copies their
-- bodies into every caller's expression, and the extraction trigger's
-- expressions are prepared again in every transaction, which made a
-- one-row insert cost a third of a millisecond more.
CREATE FUNCTION nvsentinel_text_timestamptz(s text)
RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    IF s !~ ('^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])'
             '([Tt ]([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,9})?)?)?'
             '\s*([Zz]|[+-](0\d|1[0-5])(:?[0-5]\d)?)?$')
       OR left(s, 4) = '0000'
       OR substr(s, 9, 2)::integer > extract(day FROM
              make_date(left(s, 4)::integer, substr(s, 6, 2)::integer, 1)
              + interval '1 month' - interval '1 day') THEN
        RETURN NULL;
    END IF;
    RETURN s::timestamptz;
END
$$;

-- A timestamp from the shapes writers use: an RFC 3339 string, a protobuf
-- Timestamp {seconds, nanos}, MongoDB extended JSON {"$date": string | ms |
-- {"$numberLong": ms}}, or a number of seconds since the epoch; else NULL.
CREATE FUNCTION nvsentinel_json_timestamptz(v jsonb)
RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    ms text;
BEGIN
    CASE jsonb_typeof(v)
    WHEN 'string' THEN
        RETURN nvsentinel_text_timestamptz(v #>> '{}');
    WHEN 'number' THEN
        RETURN nvsentinel_epoch_timestamptz((v #>> '{}')::numeric);
    WHEN 'object' THEN
        IF jsonb_typeof(v -> '$date') = 'string' THEN
            RETURN nvsentinel_text_timestamptz(v ->> '$date');
        END IF;
        ms := coalesce(v -> '$date' ->> '$numberLong', v ->> '$date');
        IF ms ~ '^-?\d{1,16}$' THEN
            RETURN nvsentinel_epoch_timestamptz(ms::numeric / 1000);
        ELSIF (v ->> 'seconds') ~ '^-?\d{1,12}$' THEN
            RETURN nvsentinel_epoch_timestamptz((v ->> 'seconds')::numeric
                + CASE WHEN (v ->> 'nanos') ~ '^\d{1,9}$'
                       THEN (v ->> 'nanos')::numeric / 1000000000 ELSE 0 END);
        END IF;
    ELSE
        NULL;
    END CASE;
    RETURN NULL;
END
$$;

-- NVSentinel's RecommendedAction enum name (its recommended_action column)
-- from the number its documents carry, or the name when given as text.
CREATE FUNCTION nvsentinel_recommended_action_name(v jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE jsonb_typeof(v)
        WHEN 'string' THEN left(v #>> '{}', 100)
        WHEN 'number' THEN CASE v #>> '{}'
            WHEN '0' THEN 'NONE' WHEN '2' THEN 'COMPONENT_RESET' WHEN '5' THEN 'CONTACT_SUPPORT'
            WHEN '6' THEN 'RUN_FIELDDIAG' WHEN '15' THEN 'RESTART_VM' WHEN '24' THEN 'RESTART_BM'
            WHEN '25' THEN 'REPLACE_VM' WHEN '26' THEN 'RUN_DCGMEUD' WHEN '27' THEN 'CUSTOM'
            WHEN '39' THEN 'RESTART_APP' WHEN '99' THEN 'UNKNOWN'
            ELSE left(v #>> '{}', 100) END
    END
$$;

-- The id column for a document's `_id`: the UUID itself when `_id` is one;
-- otherwise (a MongoDB ObjectId, any other string) a UUID derived from its
-- text form (md5), so that the same `_id` always lands on the same row. The
-- document keeps its `_id` as written. NULL when the document has no `_id`.
-- (PL/pgSQL: its plan is cached; it is IMMUTABLE, so a lookup by a constant
-- `_id` is folded to a constant and served by the primary key.)
CREATE FUNCTION nvsentinel_document_uuid(v jsonb)
RETURNS uuid
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    t text := CASE WHEN jsonb_typeof(v -> '$oid') = 'string' THEN v ->> '$oid'
                   ELSE nvsentinel_json_text(v) END;
BEGIN
    IF t IS NULL THEN
        RETURN NULL;
    ELSIF t ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' THEN
        RETURN t::uuid;
    END IF;
    RETURN md5('nvsentinel:' || t)::uuid;
END
$$;

-- NVSentinel's generic InsertMany (documents other than health events with
-- status) writes `INSERT INTO health_events (data) VALUES ($1) RETURNING id`, a
-- column its own schema lacks. Here `data` exists, and the extraction trigger
-- moves what is written there into `document`, so it is always NULL when
-- stored. (Its generic upsert, ON CONFLICT ((data->>'_id')), stays unsupported:
-- it needs a unique index on a column that never holds a value.)
ALTER TABLE health_events ADD COLUMN data jsonb;

-- Our columns of health_events (filled for existing rows below).
ALTER TABLE health_events
    ADD COLUMN agent text,
    ADD COLUMN component_class text,
    ADD COLUMN check_name text,
    ADD COLUMN is_fatal boolean,
    ADD COLUMN is_healthy boolean,
    ADD COLUMN recommended_action_code integer,
    ADD COLUMN processing_strategy integer,
    ADD COLUMN event_timestamp timestamptz,
    ADD COLUMN quarantine_status text,
    ADD COLUMN eviction_status text,
    ADD COLUMN remediated boolean,
    ADD COLUMN last_remediation_at timestamptz;

-- The extraction triggers compute every field with plain expressions over
-- the single-expression helpers above, which PostgreSQL inlines: no query is
-- planned per row.
CREATE FUNCTION health_events_extract()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    d jsonb;
    he jsonb;
    st jsonb;
    ev jsonb;
    doc_id uuid;
BEGIN
    IF NEW.data IS NOT NULL THEN
        NEW.document := NEW.data;
        NEW.data := NULL;
    END IF;
    d := NEW.document;
    IF jsonb_typeof(d) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'document must be a JSON object' USING ERRCODE = 'check_violation';
    END IF;
    doc_id := nvsentinel_document_uuid(d -> '_id');
    IF TG_OP = 'INSERT' THEN
        -- A document with an `_id` decides its row's id (the column default
        -- has already drawn one by now; NVSentinel's documents have no `_id`).
        NEW.id := coalesce(doc_id, NEW.id, uuid_generate_v4());
    ELSIF NEW.id IS DISTINCT FROM OLD.id OR doc_id <> OLD.id
          OR (doc_id IS NULL AND OLD.document ? '_id') THEN
        RAISE EXCEPTION 'the _id of a document is immutable (row %, document _id %)',
            OLD.id, d -> '_id' USING ERRCODE = 'check_violation';
    ELSIF d IS NOT DISTINCT FROM OLD.document
          AND coalesce(current_setting('nvsentinel.extract_unchanged', true), '') <> 'on' THEN
        RETURN NEW;
    END IF;

    he := coalesce(d -> 'healthevent', d -> 'healthEvent');
    st := coalesce(d -> 'healtheventstatus', d -> 'healthEventStatus');
    ev := coalesce(st -> 'userpodsevictionstatus', st -> 'userPodsEvictionStatus');
    NEW.agent := nvsentinel_json_text(he -> 'agent');
    NEW.component_class := nvsentinel_json_text(coalesce(he -> 'componentclass', he -> 'componentClass'));
    NEW.check_name := nvsentinel_json_text(coalesce(he -> 'checkname', he -> 'checkName'));
    NEW.is_fatal := nvsentinel_json_bool(coalesce(he -> 'isfatal', he -> 'isFatal'));
    NEW.is_healthy := nvsentinel_json_bool(coalesce(he -> 'ishealthy', he -> 'isHealthy'));
    NEW.recommended_action_code := nvsentinel_json_int(
        coalesce(he -> 'recommendedaction', he -> 'recommendedAction'));
    NEW.processing_strategy := nvsentinel_json_int(
        coalesce(he -> 'processingstrategy', he -> 'processingStrategy'));
    NEW.event_timestamp := nvsentinel_json_timestamptz(
        coalesce(he -> 'generatedtimestamp', he -> 'generatedTimestamp'));
    NEW.quarantine_status := nullif(nvsentinel_json_text(
        coalesce(st -> 'nodequarantined', st -> 'nodeQuarantined')), '');
    NEW.eviction_status := nullif(nvsentinel_json_text(ev -> 'status'), '');
    NEW.remediated := nvsentinel_json_bool(coalesce(st -> 'faultremediated', st -> 'faultRemediated'));
    NEW.last_remediation_at := nvsentinel_json_timestamptz(
        coalesce(st -> 'lastremediationtimestamp', st -> 'lastRemediationTimestamp'));
    IF TG_OP = 'INSERT' THEN
        -- NVSentinel's inserts never name created_at: its default stands in
        -- for the document's own time, which is used when there is one.
        NEW.created_at := coalesce(nvsentinel_json_timestamptz(
            coalesce(d -> 'createdAt', d -> 'createdat')), NEW.created_at, now());
    END IF;

    IF (TG_OP = 'INSERT' AND NEW.node_name IS NOT NULL)
       OR (TG_OP = 'UPDATE' AND (NEW.node_name, NEW.event_type, NEW.severity, NEW.recommended_action,
                                 NEW.node_quarantined, NEW.user_pods_eviction_status,
                                 NEW.user_pods_eviction_message, NEW.fault_remediated,
                                 NEW.last_remediation_timestamp, NEW.quarantine_finish_timestamp,
                                 NEW.drain_finish_timestamp, NEW.created_at, NEW.updated_at)
               IS DISTINCT FROM (OLD.node_name, OLD.event_type, OLD.severity, OLD.recommended_action,
                                 OLD.node_quarantined, OLD.user_pods_eviction_status,
                                 OLD.user_pods_eviction_message, OLD.fault_remediated,
                                 OLD.last_remediation_timestamp, OLD.quarantine_finish_timestamp,
                                 OLD.drain_finish_timestamp, OLD.created_at, OLD.updated_at))
       OR coalesce(current_setting('nvsentinel.extract_unchanged', true), '') = 'on' THEN
        -- NVSentinel's own statement (or the backfill below): its columns stay
        -- as it wrote them.
        RETURN NEW;
    END IF;

    -- A document-only write: NVSentinel's columns follow the document too.
    NEW.node_name := coalesce(left(nvsentinel_json_text(coalesce(he -> 'nodename', he -> 'nodeName')), 255), '');
    NEW.event_type := left(nvsentinel_json_text(coalesce(he -> 'checkname', he -> 'checkName')), 100);
    NEW.severity := left(nvsentinel_json_text(coalesce(he -> 'componentclass', he -> 'componentClass')), 50);
    NEW.recommended_action := nvsentinel_recommended_action_name(
        coalesce(he -> 'recommendedaction', he -> 'recommendedAction'));
    NEW.node_quarantined := NEW.quarantine_status;
    NEW.user_pods_eviction_status := coalesce(NEW.eviction_status, 'NotStarted');
    NEW.user_pods_eviction_message := nvsentinel_json_text(ev -> 'message');
    NEW.fault_remediated := NEW.remediated;
    NEW.last_remediation_timestamp := NEW.last_remediation_at;
    NEW.quarantine_finish_timestamp := nvsentinel_json_timestamptz(
        coalesce(st -> 'quarantinefinishtimestamp', st -> 'quarantineFinishTimestamp'));
    NEW.drain_finish_timestamp := nvsentinel_json_timestamptz(
        coalesce(st -> 'drainfinishtimestamp', st -> 'drainFinishTimestamp'));
    IF TG_OP = 'UPDATE' THEN
        NEW.created_at := coalesce(nvsentinel_json_timestamptz(
            coalesce(d -> 'createdAt', d -> 'createdat')), OLD.created_at);
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION maintenance_events_extract()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    d jsonb := NEW.document;
    doc_id uuid;
BEGIN
    IF jsonb_typeof(d) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'document must be a JSON object' USING ERRCODE = 'check_violation';
    END IF;
    doc_id := nvsentinel_document_uuid(d -> '_id');
    IF TG_OP = 'INSERT' THEN
        NEW.id := coalesce(doc_id, NEW.id, uuid_generate_v4());
    ELSIF NEW.id IS DISTINCT FROM OLD.id OR doc_id <> OLD.id
          OR (doc_id IS NULL AND OLD.document ? '_id') THEN
        RAISE EXCEPTION 'the _id of a document is immutable (row %, document _id %)',
            OLD.id, d -> '_id' USING ERRCODE = 'check_violation';
    ELSIF d IS NOT DISTINCT FROM OLD.document THEN
        RETURN NEW;
    END IF;

    IF (TG_OP = 'INSERT' AND NEW.event_id IS NOT NULL)
       OR (TG_OP = 'UPDATE' AND (NEW.event_id, NEW.csp, NEW.cluster_name, NEW.node_name, NEW.status,
                                 NEW.csp_status, NEW.scheduled_start_time, NEW.actual_end_time,
                                 NEW.event_received_timestamp, NEW.last_updated_timestamp,
                                 NEW.created_at, NEW.updated_at)
               IS DISTINCT FROM (OLD.event_id, OLD.csp, OLD.cluster_name, OLD.node_name, OLD.status,
                                 OLD.csp_status, OLD.scheduled_start_time, OLD.actual_end_time,
                                 OLD.event_received_timestamp, OLD.last_updated_timestamp,
                                 OLD.created_at, OLD.updated_at)) THEN
        RETURN NEW;
    END IF;

    -- A document-only write. NOT NULL columns NVSentinel requires: a document
    -- without them is still stored (event_id falls back to the row id, the
    -- others to '' or now()).
    NEW.event_id := coalesce(left(nvsentinel_json_text(coalesce(d -> 'eventId', d -> 'eventid')), 255),
                             NEW.id::text);
    NEW.csp := coalesce(left(nvsentinel_json_text(d -> 'csp'), 50), '');
    NEW.cluster_name := coalesce(left(nvsentinel_json_text(
        coalesce(d -> 'clusterName', d -> 'clustername')), 255), '');
    NEW.node_name := left(nvsentinel_json_text(coalesce(d -> 'nodeName', d -> 'nodename')), 255);
    NEW.status := coalesce(left(nvsentinel_json_text(d -> 'status'), 50), '');
    NEW.csp_status := left(nvsentinel_json_text(coalesce(d -> 'cspStatus', d -> 'cspstatus')), 50);
    NEW.scheduled_start_time := nvsentinel_json_timestamptz(
        coalesce(d -> 'scheduledStartTime', d -> 'scheduledstarttime'));
    NEW.actual_end_time := nvsentinel_json_timestamptz(
        coalesce(d -> 'actualEndTime', d -> 'actualendtime'));
    NEW.event_received_timestamp := coalesce(nvsentinel_json_timestamptz(
        coalesce(d -> 'eventReceivedTimestamp', d -> 'eventreceivedtimestamp')),
        CASE WHEN TG_OP = 'UPDATE' THEN OLD.event_received_timestamp END, now());
    NEW.last_updated_timestamp := coalesce(nvsentinel_json_timestamptz(
        coalesce(d -> 'lastUpdatedTimestamp', d -> 'lastupdatedtimestamp')), now());
    IF TG_OP = 'INSERT' THEN
        NEW.created_at := coalesce(nvsentinel_json_timestamptz(
            coalesce(d -> 'createdAt', d -> 'createdat')), NEW.created_at, now());
    ELSE
        NEW.created_at := coalesce(nvsentinel_json_timestamptz(
            coalesce(d -> 'createdAt', d -> 'createdat')), OLD.created_at);
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER health_events_extract
    BEFORE INSERT OR UPDATE ON health_events
    FOR EACH ROW EXECUTE FUNCTION health_events_extract();
CREATE TRIGGER maintenance_events_extract
    BEFORE INSERT OR UPDATE ON maintenance_events
    FOR EACH ROW EXECUTE FUNCTION maintenance_events_extract();

-- Rows that exist already (a database NVSentinel's own files set up): our
-- columns from their documents, by the extraction trigger itself
-- (nvsentinel.extract_unchanged: extract although the document is unchanged,
-- leave NVSentinel's columns alone), without a change record or a
-- notification (NVSentinel's trigger is off while this transaction runs).
ALTER TABLE health_events DISABLE TRIGGER health_events_changes;
SET LOCAL nvsentinel.extract_unchanged = 'on';
UPDATE health_events SET document = document;
SET LOCAL nvsentinel.extract_unchanged = 'off';
ALTER TABLE health_events ENABLE TRIGGER health_events_changes;

-- Our indexes (NVSentinel's are in 0001).
CREATE INDEX health_events_node_created_idx ON health_events (node_name, created_at DESC);
CREATE INDEX health_events_event_timestamp_idx ON health_events (event_timestamp DESC);
CREATE INDEX health_events_quarantine_status_idx ON health_events (quarantine_status, created_at DESC);
CREATE INDEX health_events_eviction_status_idx ON health_events (eviction_status, created_at DESC);
CREATE INDEX health_events_agent_check_idx ON health_events (agent, check_name, created_at DESC);
CREATE INDEX health_events_fatal_idx ON health_events (created_at DESC) WHERE is_fatal;
CREATE INDEX health_events_unremediated_idx ON health_events (node_name, created_at DESC)
    WHERE remediated IS NOT TRUE;

-- The change log's positions. Rows from before this migration get position 0:
-- they predate every stream of this project.
ALTER TABLE datastore_changelog
    ADD COLUMN position_txid xid8 NOT NULL DEFAULT '0',
    ADD COLUMN version bigint,
    ADD COLUMN replaced boolean NOT NULL DEFAULT false;
ALTER TABLE datastore_changelog ALTER COLUMN position_txid SET DEFAULT pg_current_xact_id();

COMMENT ON COLUMN datastore_changelog.position_txid IS
    'This project''s stream position (position_txid, id), read below pg_snapshot_xmin(pg_current_snapshot())';

-- One row per document ever written: its current version and the position of
-- its last change. Written only by datastore_changelog_position (SECURITY
-- DEFINER), so no service can forge or move a document's position.
CREATE TABLE datastore_document_versions (
    table_name     text NOT NULL,
    id             uuid NOT NULL,
    version        bigint NOT NULL,
    position_txid  xid8 NOT NULL,
    PRIMARY KEY (table_name, id)
);

COMMENT ON TABLE datastore_document_versions IS
    'Per document: version and position_txid of its last change (advanced by datastore_changelog_position)';

-- Stamps a change row with its document's version and position. Runs inside
-- log_table_changes, so the writer holds the document's row lock: the
-- previous change of the document has committed (or is this transaction's),
-- and its position is final. An insert starts at version 1 again (a document
-- deleted and written anew), still positioned after its earlier changes. A
-- document without a row here was written with no change record (it predates
-- this migration, or `nvsentinel-store migrate` imported it): it is at version
-- 1, before every stream.
CREATE FUNCTION datastore_changelog_position()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    now_txid pg_catalog.xid8 := pg_catalog.pg_current_xact_id();
BEGIN
    IF pg_catalog.pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'datastore_changelog is written by the change triggers of the event tables only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO public.datastore_document_versions AS v (table_name, id, version, position_txid)
    VALUES (NEW.table_name, NEW.record_id, CASE NEW.operation WHEN 'UPDATE' THEN 2 ELSE 1 END, now_txid)
    ON CONFLICT ON CONSTRAINT datastore_document_versions_pkey DO UPDATE
       SET version = CASE NEW.operation WHEN 'UPDATE' THEN v.version + 1
                                        WHEN 'DELETE' THEN v.version ELSE 1 END,
           position_txid = greatest(now_txid, v.position_txid)
    RETURNING v.version, v.position_txid INTO NEW.version, NEW.position_txid;
    NEW.replaced := NEW.operation = 'UPDATE'
        AND coalesce(pg_catalog.current_setting('nvsentinel.change_operation', true), '') = 'replace';
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION datastore_changelog_position() FROM PUBLIC;

CREATE TRIGGER datastore_changelog_position
    BEFORE INSERT ON datastore_changelog
    FOR EACH ROW EXECUTE FUNCTION datastore_changelog_position();

-- The readers' path: one table, in cursor order.
CREATE INDEX datastore_changelog_cursor_idx ON datastore_changelog (table_name, position_txid, id);
-- Retention by age.
CREATE INDEX datastore_changelog_changed_at_idx ON datastore_changelog (changed_at);

-- Per table, the highest (position_txid, id) position deleted from the change
-- log: a resume position below it has lost history.
CREATE TABLE datastore_changelog_pruned (
    collection     text PRIMARY KEY,
    position_txid  xid8 NOT NULL,
    id             bigint NOT NULL,
    pruned_at      timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION datastore_changelog_record_pruned()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    INSERT INTO public.datastore_changelog_pruned AS p (collection, position_txid, id)
    SELECT DISTINCT ON (g.table_name) g.table_name, g.position_txid, g.id
      FROM gone AS g
     ORDER BY g.table_name, g.position_txid DESC, g.id DESC
    ON CONFLICT ON CONSTRAINT datastore_changelog_pruned_pkey DO UPDATE
       SET position_txid = excluded.position_txid, id = excluded.id, pruned_at = now()
     WHERE (excluded.position_txid, excluded.id) > (p.position_txid, p.id);
    RETURN NULL;
END
$$;

REVOKE ALL ON FUNCTION datastore_changelog_record_pruned() FROM PUBLIC;

CREATE TRIGGER datastore_changelog_record_pruned
    AFTER DELETE ON datastore_changelog REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION datastore_changelog_record_pruned();

GRANT SELECT ON datastore_changelog_pruned TO nvsentinel_app;
