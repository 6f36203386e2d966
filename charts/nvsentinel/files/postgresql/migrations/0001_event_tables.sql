-- 0001 event tables: health_events and maintenance_events.
--
-- Transactional (the applier runs it in one transaction with its
-- schema_migrations row): the tables are new and empty, so plain CREATE INDEX
-- is instant and nothing else waits on it.
--
-- Each table keeps the whole document in `document` (JSONB) and the fields the
-- services query in typed columns. A BEFORE INSERT OR UPDATE trigger fills the
-- typed columns from the document inside PostgreSQL, so any writer only
-- supplies the document:
--
--   INSERT INTO health_events (document) VALUES ('{"healthevent": {...}}');
--
-- Keys are matched case-insensitively: the Go driver's lower-cased spelling
-- (`nodename`) is canonical, camelCase (`nodeName`) is accepted too.
-- The trigger also sets `id` (the document's `_id`, else a new UUID, written
-- back into the document) and `version` (1 on insert, +1 on every update;
-- updates of one row are serialised by its row lock, so versions rise in
-- commit order) and `change_position_txid`, the transaction part of the
-- document's position in the change history (see 0002_change_capture.sql):
-- the writing transaction's id, or the previous version's position if that is
-- higher, so that a document's changes are ordered by version in the history.

-- Value at `path` (lower-case keys) in `doc`, matching keys case-insensitively;
-- NULL when any step is missing.
CREATE FUNCTION nvsentinel_doc_path(doc jsonb, VARIADIC path text[])
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    cur jsonb := doc;
    step text;
    k text;
    matched boolean;
BEGIN
    FOREACH step IN ARRAY path LOOP
        IF cur IS NULL OR jsonb_typeof(cur) <> 'object' THEN
            RETURN NULL;
        END IF;
        IF cur ? step THEN
            cur := cur -> step;
        ELSE
            matched := false;
            FOR k IN SELECT jsonb_object_keys(cur) LOOP
                IF lower(k) = step THEN
                    cur := cur -> k;
                    matched := true;
                    EXIT;
                END IF;
            END LOOP;
            IF NOT matched THEN
                RETURN NULL;
            END IF;
        END IF;
    END LOOP;
    RETURN cur;
END
$$;

-- A scalar JSON value as text: strings unquoted, numbers and booleans as
-- written, NULL for JSON null, objects and arrays.
CREATE FUNCTION nvsentinel_json_text(v jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE jsonb_typeof(v)
        WHEN 'string' THEN v #>> '{}'
        WHEN 'number' THEN v #>> '{}'
        WHEN 'boolean' THEN v #>> '{}'
    END
$$;

-- A JSON boolean (or the strings "true"/"false") as boolean, else NULL.
CREATE FUNCTION nvsentinel_json_bool(v jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN jsonb_typeof(v) = 'boolean' THEN (v #>> '{}')::boolean
        WHEN jsonb_typeof(v) = 'string' AND lower(v #>> '{}') IN ('true', 'false')
            THEN lower(v #>> '{}')::boolean
    END
$$;

-- A JSON integer (or a string of digits) as integer, else NULL.
CREATE FUNCTION nvsentinel_json_int(v jsonb)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN jsonb_typeof(v) IN ('number', 'string') AND (v #>> '{}') ~ '^-?[0-9]{1,9}$'
            THEN (v #>> '{}')::integer
    END
$$;

-- A timestamp from the shapes writers use: an RFC 3339 / ISO 8601 string,
-- a protobuf Timestamp {seconds, nanos}, MongoDB extended JSON {"$date": ...}
-- (string, milliseconds, or {"$numberLong": "ms"}), or a number of seconds
-- since the epoch. NULL for anything else.
CREATE FUNCTION nvsentinel_json_timestamptz(v jsonb)
RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    s text;
    secs numeric;
    nanos numeric;
BEGIN
    CASE jsonb_typeof(v)
    WHEN 'string' THEN
        s := v #>> '{}';
        IF s ~ '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|z|[+-]\d{2}(:?\d{2})?)?$' THEN
            RETURN s::timestamptz;
        END IF;
    WHEN 'number' THEN
        RETURN to_timestamp((v #>> '{}')::double precision);
    WHEN 'object' THEN
        IF v ? '$date' THEN
            IF jsonb_typeof(v -> '$date') = 'string' THEN
                RETURN nvsentinel_json_timestamptz(v -> '$date');
            END IF;
            s := coalesce(v -> '$date' ->> '$numberLong', v ->> '$date');
            IF s ~ '^-?\d+$' THEN
                RETURN to_timestamp(s::numeric / 1000);
            END IF;
            RETURN NULL;
        END IF;
        s := nvsentinel_json_text(nvsentinel_doc_path(v, 'seconds'));
        IF s ~ '^-?\d+$' THEN
            secs := s::numeric;
            nanos := coalesce(nullif(nvsentinel_json_text(nvsentinel_doc_path(v, 'nanos')), '')::numeric, 0);
            RETURN to_timestamp((secs + nanos / 1000000000)::double precision);
        END IF;
    ELSE
        NULL;
    END CASE;
    RETURN NULL;
END
$$;

-- The text form of a document's `_id`: a string as is, {"$oid": hex} as hex,
-- a number as written; NULL when absent.
CREATE FUNCTION nvsentinel_id_text(v jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN jsonb_typeof(v) = 'object' AND jsonb_typeof(v -> '$oid') = 'string' THEN v ->> '$oid'
        ELSE nvsentinel_json_text(v)
    END
$$;

-- Shared id/version handling of the BEFORE triggers. `fallback_id` is used
-- on insert when the document has no `_id` (NULL: a new UUID). The returned
-- row has id, version and document (with `_id`) set.
CREATE FUNCTION nvsentinel_identify(op text, new_id text, old_id text, old_version bigint,
                                    doc jsonb, fallback_id text,
                                    OUT id text, OUT version bigint, OUT document jsonb)
LANGUAGE plpgsql
AS $$
DECLARE
    doc_id text := nvsentinel_id_text(doc -> '_id');
BEGIN
    IF doc IS NULL OR jsonb_typeof(doc) <> 'object' THEN
        RAISE EXCEPTION 'document must be a JSON object'
            USING ERRCODE = 'check_violation';
    END IF;
    IF op = 'UPDATE' THEN
        IF new_id IS DISTINCT FROM old_id OR (doc_id IS NOT NULL AND doc_id <> old_id) THEN
            RAISE EXCEPTION 'the _id of a document is immutable (was %)', old_id
                USING ERRCODE = 'check_violation';
        END IF;
        id := old_id;
        version := old_version + 1;
    ELSE
        IF new_id IS NOT NULL AND doc_id IS NOT NULL AND new_id <> doc_id THEN
            RAISE EXCEPTION 'id % and document _id % differ', new_id, doc_id
                USING ERRCODE = 'check_violation';
        END IF;
        id := coalesce(new_id, doc_id, fallback_id, gen_random_uuid()::text);
        version := 1;
    END IF;
    document := doc;
    IF doc_id IS NULL THEN
        document := jsonb_set(doc, '{_id}', to_jsonb(id));
    END IF;
END
$$;

CREATE TABLE health_events (
    id                       text PRIMARY KEY,
    document                 jsonb NOT NULL,
    version                  bigint NOT NULL DEFAULT 1,
    change_position_txid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    node_name                text,
    agent                    text,
    component_class          text,
    check_name               text,
    is_fatal                 boolean,
    is_healthy               boolean,
    recommended_action       integer,
    processing_strategy      integer,
    quarantine_status        text,
    eviction_status          text,
    fault_remediated         boolean,
    last_remediation_at      timestamptz,
    event_timestamp          timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE health_events IS
    'One document per health event; typed columns are filled from document by trigger health_events_extract';

CREATE FUNCTION health_events_extract()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    he jsonb;
    st jsonb;
BEGIN
    SELECT i.id, i.version, i.document
      INTO NEW.id, NEW.version, NEW.document
      FROM nvsentinel_identify(TG_OP,
                               NEW.id,
                               CASE WHEN TG_OP = 'UPDATE' THEN OLD.id END,
                               CASE WHEN TG_OP = 'UPDATE' THEN OLD.version END,
                               NEW.document, NULL) AS i;
    NEW.change_position_txid := CASE WHEN TG_OP = 'UPDATE'
        THEN greatest(pg_current_xact_id(), OLD.change_position_txid)
        ELSE pg_current_xact_id() END;
    he := nvsentinel_doc_path(NEW.document, 'healthevent');
    st := nvsentinel_doc_path(NEW.document, 'healtheventstatus');
    NEW.node_name := nvsentinel_json_text(nvsentinel_doc_path(he, 'nodename'));
    NEW.agent := nvsentinel_json_text(nvsentinel_doc_path(he, 'agent'));
    NEW.component_class := nvsentinel_json_text(nvsentinel_doc_path(he, 'componentclass'));
    NEW.check_name := nvsentinel_json_text(nvsentinel_doc_path(he, 'checkname'));
    NEW.is_fatal := nvsentinel_json_bool(nvsentinel_doc_path(he, 'isfatal'));
    NEW.is_healthy := nvsentinel_json_bool(nvsentinel_doc_path(he, 'ishealthy'));
    NEW.recommended_action := nvsentinel_json_int(nvsentinel_doc_path(he, 'recommendedaction'));
    NEW.processing_strategy := nvsentinel_json_int(nvsentinel_doc_path(he, 'processingstrategy'));
    NEW.event_timestamp := nvsentinel_json_timestamptz(nvsentinel_doc_path(he, 'generatedtimestamp'));
    NEW.quarantine_status := nullif(nvsentinel_json_text(nvsentinel_doc_path(st, 'nodequarantined')), '');
    NEW.eviction_status := nullif(nvsentinel_json_text(
        nvsentinel_doc_path(st, 'userpodsevictionstatus', 'status')), '');
    NEW.fault_remediated := nvsentinel_json_bool(nvsentinel_doc_path(st, 'faultremediated'));
    NEW.last_remediation_at := nvsentinel_json_timestamptz(
        nvsentinel_doc_path(st, 'lastremediationtimestamp'));
    NEW.created_at := coalesce(
        nvsentinel_json_timestamptz(nvsentinel_doc_path(NEW.document, 'createdat')),
        CASE WHEN TG_OP = 'UPDATE' THEN OLD.created_at END,
        now());
    RETURN NEW;
END
$$;

CREATE TRIGGER health_events_extract
    BEFORE INSERT OR UPDATE ON health_events
    FOR EACH ROW EXECUTE FUNCTION health_events_extract();

-- The latest events of one node, newest first.
CREATE INDEX health_events_node_created_idx ON health_events (node_name, created_at DESC);
-- Time ranges.
CREATE INDEX health_events_created_idx ON health_events (created_at DESC);
CREATE INDEX health_events_event_timestamp_idx ON health_events (event_timestamp DESC);
-- Events by quarantine and eviction status.
CREATE INDEX health_events_quarantine_status_idx ON health_events (quarantine_status, created_at DESC);
CREATE INDEX health_events_eviction_status_idx ON health_events (eviction_status, created_at DESC);
-- Events by agent and check.
CREATE INDEX health_events_agent_check_idx ON health_events (agent, check_name, created_at DESC);
-- Fatal events (a small share of all events).
CREATE INDEX health_events_fatal_idx ON health_events (node_name, created_at DESC) WHERE is_fatal;
-- Unremediated events: fault_remediated false or not set.
CREATE INDEX health_events_unremediated_idx ON health_events (node_name, created_at DESC)
    WHERE fault_remediated IS NOT TRUE;

CREATE TABLE maintenance_events (
    id                       text PRIMARY KEY,
    document                 jsonb NOT NULL,
    version                  bigint NOT NULL DEFAULT 1,
    change_position_txid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id                 text UNIQUE,
    csp                      text,
    cluster_name             text,
    node_name                text,
    resource_type            text,
    resource_id              text,
    maintenance_type         text,
    status                   text,
    csp_status               text,
    recommended_action       text,
    scheduled_start_time     timestamptz,
    scheduled_end_time       timestamptz,
    actual_start_time        timestamptz,
    actual_end_time          timestamptz,
    event_received_at        timestamptz,
    last_updated_at          timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE maintenance_events IS
    'One document per CSP maintenance event; typed columns are filled from document by trigger maintenance_events_extract';

CREATE FUNCTION maintenance_events_extract()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    d jsonb;
BEGIN
    SELECT i.id, i.version, i.document
      INTO NEW.id, NEW.version, NEW.document
      FROM nvsentinel_identify(TG_OP,
                               NEW.id,
                               CASE WHEN TG_OP = 'UPDATE' THEN OLD.id END,
                               CASE WHEN TG_OP = 'UPDATE' THEN OLD.version END,
                               NEW.document,
                               nvsentinel_json_text(nvsentinel_doc_path(NEW.document, 'eventid'))) AS i;
    NEW.change_position_txid := CASE WHEN TG_OP = 'UPDATE'
        THEN greatest(pg_current_xact_id(), OLD.change_position_txid)
        ELSE pg_current_xact_id() END;
    d := NEW.document;
    NEW.event_id := nvsentinel_json_text(nvsentinel_doc_path(d, 'eventid'));
    NEW.csp := nvsentinel_json_text(nvsentinel_doc_path(d, 'csp'));
    NEW.cluster_name := nvsentinel_json_text(nvsentinel_doc_path(d, 'clustername'));
    NEW.node_name := nvsentinel_json_text(nvsentinel_doc_path(d, 'nodename'));
    NEW.resource_type := nvsentinel_json_text(nvsentinel_doc_path(d, 'resourcetype'));
    NEW.resource_id := nvsentinel_json_text(nvsentinel_doc_path(d, 'resourceid'));
    NEW.maintenance_type := nvsentinel_json_text(nvsentinel_doc_path(d, 'maintenancetype'));
    NEW.status := nvsentinel_json_text(nvsentinel_doc_path(d, 'status'));
    NEW.csp_status := nvsentinel_json_text(nvsentinel_doc_path(d, 'cspstatus'));
    NEW.recommended_action := nvsentinel_json_text(nvsentinel_doc_path(d, 'recommendedaction'));
    NEW.scheduled_start_time := nvsentinel_json_timestamptz(nvsentinel_doc_path(d, 'scheduledstarttime'));
    NEW.scheduled_end_time := nvsentinel_json_timestamptz(nvsentinel_doc_path(d, 'scheduledendtime'));
    NEW.actual_start_time := nvsentinel_json_timestamptz(nvsentinel_doc_path(d, 'actualstarttime'));
    NEW.actual_end_time := nvsentinel_json_timestamptz(nvsentinel_doc_path(d, 'actualendtime'));
    NEW.event_received_at := nvsentinel_json_timestamptz(nvsentinel_doc_path(d, 'eventreceivedtimestamp'));
    NEW.last_updated_at := nvsentinel_json_timestamptz(nvsentinel_doc_path(d, 'lastupdatedtimestamp'));
    NEW.created_at := coalesce(
        nvsentinel_json_timestamptz(nvsentinel_doc_path(d, 'createdat')),
        CASE WHEN TG_OP = 'UPDATE' THEN OLD.created_at END,
        now());
    RETURN NEW;
END
$$;

CREATE TRIGGER maintenance_events_extract
    BEFORE INSERT OR UPDATE ON maintenance_events
    FOR EACH ROW EXECUTE FUNCTION maintenance_events_extract();

-- By provider and cluster.
CREATE INDEX maintenance_events_csp_cluster_idx ON maintenance_events (csp, cluster_name);
-- By node and status.
CREATE INDEX maintenance_events_node_status_idx ON maintenance_events (node_name, status);
-- Events due to start: status with scheduled start.
CREATE INDEX maintenance_events_status_scheduled_start_idx
    ON maintenance_events (status, scheduled_start_time);
-- Events that ended: status with actual end.
CREATE INDEX maintenance_events_status_actual_end_idx
    ON maintenance_events (status, actual_end_time);

-- The application reads and writes events; no DDL, no TRUNCATE.
GRANT SELECT, INSERT, UPDATE, DELETE ON health_events, maintenance_events TO nvsentinel_app;
