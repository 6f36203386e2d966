-- 0001 NVSentinel's schema, version 3: the layout NVSentinel's store-client reads and writes.
--
-- Transactional. This file creates, in our own SQL, every object of NVSentinel's
-- published PostgreSQL migrations 00001-00003 with the same names, columns,
-- defaults, indexes, functions and triggers, and records versions 1, 2 and 3 in
-- NVSentinel's own nvsentinel_schema_migrations exactly as NVSentinel does. Its
-- store-client waits for MAX(version) >= 3 there before it starts.
--
-- It adopts a database that NVSentinel's own files already set up: every
-- statement skips an object that exists, so their data stays as it is. A table
-- of another layout (a pre-release of this chart had text ids) is refused
-- before anything changes.
--
-- Two columns are text where NVSentinel declares VARCHAR(50):
-- health_events.node_quarantined and user_pods_eviction_status. NVSentinel's
-- UpdateNodeQuarantineStatus and UpdatePodEvictionStatus bind one untyped
-- parameter both to the column and to `$1::text`; on a VARCHAR column
-- PostgreSQL refuses that statement ("inconsistent types deduced for
-- parameter"). text accepts every value VARCHAR(50) does.
--
-- Everything this project adds on top (change positions, typed extraction,
-- consumer positions, retention) lives in the later migrations, in objects of
-- its own; NVSentinel's statements cannot tell it is there.

CREATE TABLE IF NOT EXISTS nvsentinel_schema_migrations (
    version      bigint PRIMARY KEY,
    description  text NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now()
);

CREATE EXTENSION IF NOT EXISTS "uuid-ossp";

-- Refuse a table that exists with another layout: the ids NVSentinel's
-- statements compare with `$1::uuid`, and the JSONB documents.
DO $$
DECLARE
    expected record;
BEGIN
    FOR expected IN
        SELECT * FROM (VALUES
            ('health_events', 'id', 'uuid'),
            ('health_events', 'document', 'jsonb'),
            ('maintenance_events', 'id', 'uuid'),
            ('maintenance_events', 'document', 'jsonb'),
            ('datastore_changelog', 'record_id', 'uuid'),
            ('datastore_changelog', 'new_values', 'jsonb'),
            ('resume_tokens', 'resume_token', 'jsonb')
        ) AS e (table_name, column_name, type_name)
    LOOP
        IF to_regclass(expected.table_name) IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_attribute AS a
             WHERE a.attrelid = to_regclass(expected.table_name)
               AND a.attname = expected.column_name
               AND NOT a.attisdropped
               AND a.atttypid = expected.type_name::regtype
        ) THEN
            RAISE EXCEPTION 'table % exists but its column % is missing or not of type %',
                expected.table_name, expected.column_name, expected.type_name
                USING HINT = 'This database was not set up by NVSentinel or this chart: '
                    'export its documents and import them into a new database with nvsentinel-store migrate.';
        END IF;
    END LOOP;
END
$$;

-- Version 1: the event tables, the change log, resume tokens.

CREATE TABLE IF NOT EXISTS maintenance_events (
    id                        uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    event_id                  varchar(255) UNIQUE NOT NULL,
    csp                       varchar(50) NOT NULL,
    cluster_name              varchar(255) NOT NULL,
    node_name                 varchar(255),
    status                    varchar(50) NOT NULL,
    csp_status                varchar(50),
    scheduled_start_time      timestamptz,
    actual_end_time           timestamptz,
    event_received_timestamp  timestamptz NOT NULL,
    last_updated_timestamp    timestamptz NOT NULL DEFAULT now(),
    document                  jsonb NOT NULL,
    created_at                timestamptz DEFAULT now(),
    updated_at                timestamptz DEFAULT now()
);

CREATE INDEX IF NOT EXISTS idx_maintenance_events_event_id ON maintenance_events (event_id);
CREATE INDEX IF NOT EXISTS idx_maintenance_events_csp_cluster ON maintenance_events (csp, cluster_name);
CREATE INDEX IF NOT EXISTS idx_maintenance_events_node_status ON maintenance_events (node_name, status);
CREATE INDEX IF NOT EXISTS idx_maintenance_events_status_scheduled
    ON maintenance_events (status, scheduled_start_time) WHERE scheduled_start_time IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_maintenance_events_status_actual_end
    ON maintenance_events (status, actual_end_time) WHERE actual_end_time IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_maintenance_events_received_desc
    ON maintenance_events (csp, cluster_name, event_received_timestamp DESC);
CREATE INDEX IF NOT EXISTS idx_maintenance_events_last_updated
    ON maintenance_events (last_updated_timestamp DESC);
CREATE INDEX IF NOT EXISTS idx_maintenance_events_csp_status
    ON maintenance_events (csp_status) WHERE csp_status IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_maintenance_events_document_gin
    ON maintenance_events USING gin (document);

CREATE TABLE IF NOT EXISTS health_events (
    id                          uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    node_name                   varchar(255) NOT NULL,
    event_type                  varchar(100),
    severity                    varchar(50),
    recommended_action          varchar(100),
    node_quarantined            text,
    user_pods_eviction_status   text DEFAULT 'NotStarted',
    user_pods_eviction_message  text,
    fault_remediated            boolean,
    last_remediation_timestamp  timestamptz,
    document                    jsonb NOT NULL,
    created_at                  timestamptz DEFAULT now(),
    updated_at                  timestamptz DEFAULT now()
);

-- A table NVSentinel's own files created has them as VARCHAR(50): text is
-- binary compatible, so this changes the type without rewriting the table.
DO $$
DECLARE
    c text;
BEGIN
    FOREACH c IN ARRAY ARRAY['node_quarantined', 'user_pods_eviction_status'] LOOP
        IF (SELECT a.atttypid <> 'text'::regtype FROM pg_attribute AS a
             WHERE a.attrelid = 'health_events'::regclass AND a.attname = c) THEN
            EXECUTE format('ALTER TABLE health_events ALTER COLUMN %I TYPE text', c);
        END IF;
    END LOOP;
END
$$;

CREATE INDEX IF NOT EXISTS idx_health_events_node_name ON health_events (node_name);
CREATE INDEX IF NOT EXISTS idx_health_events_node_type ON health_events (node_name, event_type);
CREATE INDEX IF NOT EXISTS idx_health_events_quarantined
    ON health_events (node_quarantined) WHERE node_quarantined IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_health_events_eviction_status ON health_events (user_pods_eviction_status);
CREATE INDEX IF NOT EXISTS idx_health_events_created_desc ON health_events (created_at DESC);
CREATE INDEX IF NOT EXISTS idx_health_events_created_id ON health_events (created_at, id);
-- NVSentinel's recovery lookups: the same event identity, either key spelling.
CREATE INDEX IF NOT EXISTS idx_health_events_recovery_identity ON health_events (
    (document -> 'healthevent' ->> 'agent'),
    (coalesce(document -> 'healthevent' ->> 'componentclass', document -> 'healthevent' ->> 'componentClass')),
    (coalesce(document -> 'healthevent' ->> 'checkname', document -> 'healthevent' ->> 'checkName')),
    (coalesce(document -> 'healthevent' ->> 'nodename', document -> 'healthevent' ->> 'nodeName')),
    (document -> 'healthevent' ->> 'version'),
    created_at,
    id
);
-- fault-quarantine's backlog: events not yet quarantined nor in recovery.
CREATE INDEX IF NOT EXISTS idx_health_events_fault_quarantine_pending ON health_events (created_at, id)
    WHERE (coalesce(document -> 'healtheventstatus' ->> 'nodequarantined',
                    document -> 'healtheventstatus' ->> 'nodeQuarantined') IS NULL
           OR coalesce(document -> 'healtheventstatus' ->> 'nodequarantined',
                       document -> 'healtheventstatus' ->> 'nodeQuarantined') = ''
           OR coalesce(document -> 'healtheventstatus' ->> 'nodequarantined',
                       document -> 'healtheventstatus' ->> 'nodeQuarantined') = 'NotStarted')
      AND (document -> 'healtheventstatus' ->> 'faultquarantinerecovery' IS NULL
           OR document -> 'healtheventstatus' ->> 'faultquarantinerecovery' = '');
CREATE INDEX IF NOT EXISTS idx_health_events_updated_desc ON health_events (updated_at DESC);
CREATE INDEX IF NOT EXISTS idx_health_events_document_gin ON health_events USING gin (document);

CREATE TABLE IF NOT EXISTS datastore_changelog (
    id          bigserial PRIMARY KEY,
    table_name  varchar(100) NOT NULL,
    record_id   uuid NOT NULL,
    operation   varchar(20) NOT NULL,
    old_values  jsonb,
    new_values  jsonb,
    changed_at  timestamptz DEFAULT now(),
    processed   boolean DEFAULT false
);

CREATE INDEX IF NOT EXISTS idx_changelog_unprocessed ON datastore_changelog (changed_at) WHERE processed = false;
CREATE INDEX IF NOT EXISTS idx_changelog_table_record ON datastore_changelog (table_name, record_id);

CREATE TABLE IF NOT EXISTS resume_tokens (
    client_name   varchar(255) PRIMARY KEY,
    resume_token  jsonb NOT NULL,
    last_updated  timestamptz DEFAULT now()
);

-- NVSentinel's change log trigger, version 2 behaviour: one changelog row per
-- changed row, the whole old and new rows as JSON, and a notification on
-- nvsentinel_changes carrying {"id", "table", "operation"}. Its watchers LISTEN
-- for that and poll as a fallback.
--
-- The one addition: the notification is skipped when the setting
-- nvsentinel.notify_changes is 'off' (postgresql.conf or ALTER DATABASE ...
-- SET). Notifications are on unless an operator turns them off; this
-- project's change streams never need them. NVSentinel's own files, applied
-- again, install their body, which always notifies.
CREATE OR REPLACE FUNCTION log_table_changes()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    row_id uuid;
    change_id bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        row_id := NEW.id;
        INSERT INTO datastore_changelog (table_name, record_id, operation, new_values)
        VALUES (TG_TABLE_NAME, row_id, TG_OP, to_jsonb(NEW))
        RETURNING id INTO change_id;
    ELSIF TG_OP = 'UPDATE' THEN
        row_id := NEW.id;
        INSERT INTO datastore_changelog (table_name, record_id, operation, old_values, new_values)
        VALUES (TG_TABLE_NAME, row_id, TG_OP, to_jsonb(OLD), to_jsonb(NEW))
        RETURNING id INTO change_id;
    ELSIF TG_OP = 'DELETE' THEN
        row_id := OLD.id;
        INSERT INTO datastore_changelog (table_name, record_id, operation, old_values)
        VALUES (TG_TABLE_NAME, row_id, TG_OP, to_jsonb(OLD))
        RETURNING id INTO change_id;
    ELSE
        RETURN NULL;
    END IF;
    IF coalesce(current_setting('nvsentinel.notify_changes', true), '') <> 'off' THEN
        PERFORM pg_notify('nvsentinel_changes',
            json_build_object('id', change_id, 'table', TG_TABLE_NAME, 'operation', TG_OP)::text);
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;

-- Created only when missing: DROP TRIGGER would take an ACCESS EXCLUSIVE lock
-- on a live table.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['maintenance_events', 'health_events'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_trigger
                        WHERE tgrelid = t::regclass AND tgname = t || '_changes' AND NOT tgisinternal) THEN
            EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %I '
                           'FOR EACH ROW EXECUTE FUNCTION log_table_changes()', t || '_changes', t);
        END IF;
    END LOOP;
END
$$;

-- NVSentinel's retention helper: processed changes older than retention_days.
-- This project's streams do not use the processed flag; deletions by this
-- function move their pruned frontier (see 0002), so a stream that still
-- needed a deleted change reports lost history instead of skipping it.
CREATE OR REPLACE FUNCTION cleanup_changelog(retention_days integer DEFAULT 7)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM datastore_changelog
     WHERE changed_at < now() - interval '1 day' * retention_days
       AND processed = true;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- NVSentinel's bulk acknowledgement: every unprocessed change up to max_id.
CREATE OR REPLACE FUNCTION mark_changelog_processed(max_id bigint)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    n integer;
BEGIN
    UPDATE datastore_changelog SET processed = true
     WHERE id <= max_id AND processed = false;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

INSERT INTO nvsentinel_schema_migrations (version, description)
VALUES (1, 'initial PostgreSQL schema')
ON CONFLICT (version) DO NOTHING;

-- Version 2: columns and the resume index NVSentinel's Go code once created at start-up.

ALTER TABLE health_events ADD COLUMN IF NOT EXISTS quarantine_finish_timestamp timestamptz;
ALTER TABLE health_events ADD COLUMN IF NOT EXISTS drain_finish_timestamp timestamptz;

CREATE INDEX IF NOT EXISTS idx_changelog_resume
    ON datastore_changelog (table_name, changed_at, id) WHERE processed = false;

INSERT INTO nvsentinel_schema_migrations (version, description)
VALUES (2, 'reconcile historical Go runtime DDL')
ON CONFLICT (version) DO NOTHING;

-- Version 3: the unique idempotency key of the platform connector's inserts.
-- NVSentinel builds it CONCURRENTLY outside a transaction; here the table is
-- either new (the build is instant) or already has the index from NVSentinel's
-- own 00003. A database at version 2 with many events: apply NVSentinel's
-- 00003 first, then this chart's migrations (docs/nvsentinel-compatibility.md).
CREATE UNIQUE INDEX IF NOT EXISTS healthevent_idempotency_key_unique
    ON health_events ((document #>> '{healthevent,metadata,idempotencyKey}'))
    WHERE (document #>> '{healthevent,metadata,idempotencyKey}') IS NOT NULL;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_index AS i
         WHERE i.indexrelid = to_regclass('healthevent_idempotency_key_unique')
           AND i.indrelid = 'health_events'::regclass
           AND i.indisvalid AND i.indisunique AND i.indnatts = 1
    ) THEN
        RAISE EXCEPTION 'index healthevent_idempotency_key_unique is invalid or has another definition'
            USING HINT = 'Run DROP INDEX CONCURRENTLY IF EXISTS healthevent_idempotency_key_unique; '
                'then apply the migrations again.';
    END IF;
END
$$;

INSERT INTO nvsentinel_schema_migrations (version, description)
VALUES (3, 'health event idempotency index')
ON CONFLICT (version) DO NOTHING;

-- The services' role (nvsentinel_app): every statement NVSentinel's
-- store-client issues, and no DDL. Its change log trigger runs as the writer,
-- so the role inserts change rows (0002 refuses any that do not come from a
-- trigger) and sets the processed flag; it never deletes them.
GRANT SELECT ON nvsentinel_schema_migrations TO nvsentinel_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON health_events, maintenance_events TO nvsentinel_app;
GRANT SELECT, INSERT ON datastore_changelog TO nvsentinel_app;
GRANT UPDATE (processed) ON datastore_changelog TO nvsentinel_app;
GRANT USAGE ON SEQUENCE datastore_changelog_id_seq TO nvsentinel_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON resume_tokens TO nvsentinel_app;
