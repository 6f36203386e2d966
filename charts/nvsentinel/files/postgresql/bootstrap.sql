-- NVSentinel PostgreSQL bootstrap: roles and schema ownership only.
--
-- Run once by a superuser with psql, connected to the NVSentinel database
-- (normally `nvsentinel`), when a server is first initialised:
--
--   psql -v ON_ERROR_STOP=1 -d nvsentinel \
--        -v migration_user=nvsentinel_migrator -v app_user=nvsentinel \
--        -v service_users='nvsentinel_platform_connectors nvsentinel_fault_quarantine' \
--        -f bootstrap.sql
--
-- Variables (all optional, defaults shown):
--   migration_user  nvsentinel_migrator  LOGIN role that owns the schema objects;
--                                        the schema Job and `nvsentinel-store
--                                        schema apply` connect as it.
--   app_user        nvsentinel           LOGIN role of the store tools and the
--                                        `helm test` pod; a member of nvsentinel_app.
--   service_users   (none)               LOGIN roles of the NVSentinel services, one
--                                        per service, separated by spaces or commas;
--                                        each is a member of nvsentinel_app. Row-level
--                                        security on datastore_consumer_positions
--                                        keys a consumer's position by its login
--                                        role, so one service cannot read, move or
--                                        delete another's.
--   service_statement_timeout            statement_timeout set on every role of
--                   (none)               service_users (ALTER ROLE ... SET), e.g. 60s;
--                                        empty leaves the server's default.
--   service_idle_in_transaction_timeout  idle_in_transaction_session_timeout set on
--                   (none)               every role of service_users, e.g. 5min.
-- The group role nvsentinel_app (NOLOGIN) has a fixed name: the migrations
-- GRANT the application's privileges to it. So does the LOGIN role
-- nvsentinel_pruner: it is NOT a member of nvsentinel_app, may only connect and
-- use schema public, and the migrations GRANT it EXECUTE on
-- datastore_changelog_prune (the chart's prune CronJob is its only user).
--
-- Safe to run again: every step checks before it creates. Tables, indexes,
-- triggers, functions and GRANTs on them live in migrations/, not here.

\set ON_ERROR_STOP on

\if :{?migration_user}
\else
\set migration_user nvsentinel_migrator
\endif
\if :{?app_user}
\else
\set app_user nvsentinel
\endif
\if :{?service_users}
\else
\set service_users ''
\endif
\if :{?service_statement_timeout}
\else
\set service_statement_timeout ''
\endif
\if :{?service_idle_in_transaction_timeout}
\else
\set service_idle_in_transaction_timeout ''
\endif

-- The roles, created only when missing.
SELECT format('CREATE ROLE %I LOGIN', :'migration_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'migration_user')
\gexec
SELECT 'CREATE ROLE nvsentinel_app NOLOGIN'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nvsentinel_app')
\gexec
SELECT format('CREATE ROLE %I LOGIN', :'app_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_user')
\gexec
SELECT format('GRANT nvsentinel_app TO %I', :'app_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_auth_members AS m
                     JOIN pg_roles AS g ON g.oid = m.roleid AND g.rolname = 'nvsentinel_app'
                     JOIN pg_roles AS u ON u.oid = m.member AND u.rolname = :'app_user')
\gexec

-- One LOGIN role per NVSentinel service, each a member of nvsentinel_app.
CREATE TEMPORARY TABLE nvsentinel_bootstrap_service_users AS
SELECT DISTINCT u AS rolname
  FROM regexp_split_to_table(:'service_users', '[[:space:],]+') AS u
 WHERE u <> '';
SELECT format('CREATE ROLE %I LOGIN', s.rolname)
  FROM nvsentinel_bootstrap_service_users AS s
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = s.rolname)
\gexec
SELECT format('GRANT nvsentinel_app TO %I', s.rolname)
  FROM nvsentinel_bootstrap_service_users AS s
 WHERE NOT EXISTS (SELECT 1 FROM pg_auth_members AS m
                     JOIN pg_roles AS g ON g.oid = m.roleid AND g.rolname = 'nvsentinel_app'
                     JOIN pg_roles AS u ON u.oid = m.member AND u.rolname = s.rolname)
\gexec
-- A statement or an idle transaction of a service that outlives these is ended
-- by the server; a change stream's cancelled poll is polled again from where
-- the stream was (ALTER ROLE ... SET applies to new sessions; re-running this
-- file applies a changed value).
SELECT format('ALTER ROLE %I SET statement_timeout = %L', s.rolname, :'service_statement_timeout')
  FROM nvsentinel_bootstrap_service_users AS s
 WHERE :'service_statement_timeout' <> ''
\gexec
SELECT format('ALTER ROLE %I SET idle_in_transaction_session_timeout = %L', s.rolname,
              :'service_idle_in_transaction_timeout')
  FROM nvsentinel_bootstrap_service_users AS s
 WHERE :'service_idle_in_transaction_timeout' <> ''
\gexec
DROP TABLE nvsentinel_bootstrap_service_users;

-- The pruner: LOGIN, not a member of nvsentinel_app; the migrations grant it
-- EXECUTE on datastore_changelog_prune and nothing else.
SELECT 'CREATE ROLE nvsentinel_pruner LOGIN'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nvsentinel_pruner')
\gexec

-- The migration role owns schema public and may create objects in this
-- database; the application role only connects and uses the schema.
SELECT format('ALTER SCHEMA public OWNER TO %I', :'migration_user')
\gexec
SELECT format('GRANT CONNECT, CREATE, TEMPORARY ON DATABASE %I TO %I',
              current_database(), :'migration_user')
\gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO nvsentinel_app', current_database())
\gexec
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO nvsentinel_app;
SELECT format('GRANT CONNECT ON DATABASE %I TO nvsentinel_pruner', current_database())
\gexec
GRANT USAGE ON SCHEMA public TO nvsentinel_pruner;
