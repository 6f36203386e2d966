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
-- Both key spellings are read: the Go driver's lower-cased one (`nodename`,
-- canonical) and camelCase (`nodeName`). The trigger also sets `id` (the
-- document's `_id`, else a new UUID, written back into the document),
-- `version` (1 on insert, +1 on every update; updates of one row are
-- serialised by its row lock, so versions rise in commit order) and
-- `change_position_txid`, the transaction part of the document's position in
-- the change history (see 0002_change_capture.sql): the writing transaction's
-- id, or the previous version's position if that is higher, so that a
-- document's changes are ordered by version in the history.
--
-- The helpers are single-expression SQL functions, which PostgreSQL inlines
-- into the trigger's expressions (no per-call function overhead).

-- A scalar JSON value as text: strings unquoted, numbers and booleans as
-- written, NULL for JSON null, objects and arrays.
CREATE FUNCTION nvsentinel_json_text(v jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(v) IN ('string', 'number', 'boolean') THEN v #>> '{}' END
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

-- An RFC 3339 / ISO 8601 date-time string as timestamptz, else NULL.
CREATE FUNCTION nvsentinel_text_timestamptz(s text)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN s ~ '^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*([Zz]|[+-]\d{2}(:?\d{2})?)?$'
            THEN s::timestamptz
    END
$$;

-- A timestamp from the shapes writers use: an RFC 3339 string, a protobuf
-- Timestamp {seconds, nanos}, MongoDB extended JSON {"$date": string | ms |
-- {"$numberLong": ms}}, or a number of seconds since the epoch; else NULL.
CREATE FUNCTION nvsentinel_json_timestamptz(v jsonb)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE jsonb_typeof(v)
        WHEN 'string' THEN nvsentinel_text_timestamptz(v #>> '{}')
        WHEN 'number' THEN to_timestamp((v #>> '{}')::double precision)
        WHEN 'object' THEN CASE
            WHEN jsonb_typeof(v -> '$date') = 'string'
                THEN nvsentinel_text_timestamptz(v ->> '$date')
            WHEN coalesce(v -> '$date' ->> '$numberLong', v ->> '$date') ~ '^-?\d{1,15}$'
                THEN to_timestamp(coalesce(v -> '$date' ->> '$numberLong', v ->> '$date')::numeric / 1000)
            WHEN (v ->> 'seconds') ~ '^-?\d{1,12}$'
                THEN to_timestamp((v ->> 'seconds')::numeric
                     + CASE WHEN (v ->> 'nanos') ~ '^\d{1,9}$'
                            THEN (v ->> 'nanos')::numeric / 1000000000 ELSE 0 END)
        END
    END
$$;

-- The text form of a document's `_id`: a string as is, {"$oid": hex} as hex,
-- a number as written; NULL when absent.
CREATE FUNCTION nvsentinel_id_text(v jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN jsonb_typeof(v -> '$oid') = 'string' THEN v ->> '$oid'
        ELSE nvsentinel_json_text(v)
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
    d jsonb := NEW.document;
    doc_id text;
    he jsonb;
    st jsonb;
BEGIN
    IF d IS NULL OR jsonb_typeof(d) <> 'object' THEN
        RAISE EXCEPTION 'document must be a JSON object' USING ERRCODE = 'check_violation';
    END IF;
    doc_id := nvsentinel_id_text(d -> '_id');
    IF TG_OP = 'UPDATE' THEN
        IF NEW.id IS DISTINCT FROM OLD.id OR doc_id <> OLD.id THEN
            RAISE EXCEPTION 'the _id of a document is immutable (was %)', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.version := OLD.version + 1;
        NEW.change_position_txid := greatest(pg_current_xact_id(), OLD.change_position_txid);
    ELSE
        IF NEW.id <> doc_id THEN
            RAISE EXCEPTION 'id % and document _id % differ', NEW.id, doc_id
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.id := coalesce(NEW.id, doc_id, gen_random_uuid()::text);
        NEW.version := 1;
        NEW.change_position_txid := pg_current_xact_id();
    END IF;
    IF doc_id IS NULL THEN
        NEW.document := jsonb_set(d, '{_id}', to_jsonb(NEW.id));
    END IF;

    he := coalesce(d -> 'healthevent', d -> 'healthEvent');
    st := coalesce(d -> 'healtheventstatus', d -> 'healthEventStatus');
    NEW.node_name := nvsentinel_json_text(coalesce(he -> 'nodename', he -> 'nodeName'));
    NEW.agent := nvsentinel_json_text(he -> 'agent');
    NEW.component_class := nvsentinel_json_text(coalesce(he -> 'componentclass', he -> 'componentClass'));
    NEW.check_name := nvsentinel_json_text(coalesce(he -> 'checkname', he -> 'checkName'));
    NEW.is_fatal := nvsentinel_json_bool(coalesce(he -> 'isfatal', he -> 'isFatal'));
    NEW.is_healthy := nvsentinel_json_bool(coalesce(he -> 'ishealthy', he -> 'isHealthy'));
    NEW.recommended_action := nvsentinel_json_int(
        coalesce(he -> 'recommendedaction', he -> 'recommendedAction'));
    NEW.processing_strategy := nvsentinel_json_int(
        coalesce(he -> 'processingstrategy', he -> 'processingStrategy'));
    NEW.event_timestamp := nvsentinel_json_timestamptz(
        coalesce(he -> 'generatedtimestamp', he -> 'generatedTimestamp'));
    NEW.quarantine_status := nullif(nvsentinel_json_text(
        coalesce(st -> 'nodequarantined', st -> 'nodeQuarantined')), '');
    NEW.eviction_status := nullif(nvsentinel_json_text(
        coalesce(st -> 'userpodsevictionstatus', st -> 'userPodsEvictionStatus') -> 'status'), '');
    NEW.fault_remediated := nvsentinel_json_bool(
        coalesce(st -> 'faultremediated', st -> 'faultRemediated'));
    NEW.last_remediation_at := nvsentinel_json_timestamptz(
        coalesce(st -> 'lastremediationtimestamp', st -> 'lastRemediationTimestamp'));
    NEW.created_at := coalesce(
        nvsentinel_json_timestamptz(coalesce(d -> 'createdAt', d -> 'createdat')),
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
-- Fatal events, newest first (a small share of all events).
CREATE INDEX health_events_fatal_idx ON health_events (created_at DESC) WHERE is_fatal;
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
    d jsonb := NEW.document;
    doc_id text;
BEGIN
    IF d IS NULL OR jsonb_typeof(d) <> 'object' THEN
        RAISE EXCEPTION 'document must be a JSON object' USING ERRCODE = 'check_violation';
    END IF;
    doc_id := nvsentinel_id_text(d -> '_id');
    NEW.event_id := nvsentinel_json_text(coalesce(d -> 'eventId', d -> 'eventid'));
    IF TG_OP = 'UPDATE' THEN
        IF NEW.id IS DISTINCT FROM OLD.id OR doc_id <> OLD.id THEN
            RAISE EXCEPTION 'the _id of a document is immutable (was %)', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.version := OLD.version + 1;
        NEW.change_position_txid := greatest(pg_current_xact_id(), OLD.change_position_txid);
    ELSE
        IF NEW.id <> doc_id THEN
            RAISE EXCEPTION 'id % and document _id % differ', NEW.id, doc_id
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.id := coalesce(NEW.id, doc_id, NEW.event_id, gen_random_uuid()::text);
        NEW.version := 1;
        NEW.change_position_txid := pg_current_xact_id();
    END IF;
    IF doc_id IS NULL THEN
        NEW.document := jsonb_set(d, '{_id}', to_jsonb(NEW.id));
    END IF;

    NEW.csp := nvsentinel_json_text(d -> 'csp');
    NEW.cluster_name := nvsentinel_json_text(coalesce(d -> 'clusterName', d -> 'clustername'));
    NEW.node_name := nvsentinel_json_text(coalesce(d -> 'nodeName', d -> 'nodename'));
    NEW.resource_type := nvsentinel_json_text(coalesce(d -> 'resourceType', d -> 'resourcetype'));
    NEW.resource_id := nvsentinel_json_text(coalesce(d -> 'resourceId', d -> 'resourceid'));
    NEW.maintenance_type := nvsentinel_json_text(
        coalesce(d -> 'maintenanceType', d -> 'maintenancetype'));
    NEW.status := nvsentinel_json_text(d -> 'status');
    NEW.csp_status := nvsentinel_json_text(coalesce(d -> 'cspStatus', d -> 'cspstatus'));
    NEW.recommended_action := nvsentinel_json_text(
        coalesce(d -> 'recommendedAction', d -> 'recommendedaction'));
    NEW.scheduled_start_time := nvsentinel_json_timestamptz(
        coalesce(d -> 'scheduledStartTime', d -> 'scheduledstarttime'));
    NEW.scheduled_end_time := nvsentinel_json_timestamptz(
        coalesce(d -> 'scheduledEndTime', d -> 'scheduledendtime'));
    NEW.actual_start_time := nvsentinel_json_timestamptz(
        coalesce(d -> 'actualStartTime', d -> 'actualstarttime'));
    NEW.actual_end_time := nvsentinel_json_timestamptz(
        coalesce(d -> 'actualEndTime', d -> 'actualendtime'));
    NEW.event_received_at := nvsentinel_json_timestamptz(
        coalesce(d -> 'eventReceivedTimestamp', d -> 'eventreceivedtimestamp'));
    NEW.last_updated_at := nvsentinel_json_timestamptz(
        coalesce(d -> 'lastUpdatedTimestamp', d -> 'lastupdatedtimestamp'));
    NEW.created_at := coalesce(
        nvsentinel_json_timestamptz(coalesce(d -> 'createdAt', d -> 'createdat')),
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
