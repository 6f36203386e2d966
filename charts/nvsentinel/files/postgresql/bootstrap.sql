-- NVSentinel PostgreSQL bootstrap: roles and schema ownership only.
--
-- Run once by a superuser with psql, connected to the NVSentinel database
-- (normally `nvsentinel`), when a server is first initialised:
--
--   psql -v ON_ERROR_STOP=1 -d nvsentinel \
--        -v migration_user=nvsentinel_migrator -v app_user=nvsentinel \
--        -f bootstrap.sql
--
-- Variables (both optional, defaults shown):
--   migration_user  nvsentinel_migrator  LOGIN role that owns the schema objects;
--                                        the schema Job and `nvsentinel-store
--                                        schema apply` connect as it.
--   app_user        nvsentinel           LOGIN role the services connect as; it is
--                                        made a member of nvsentinel_app.
-- The group role nvsentinel_app (NOLOGIN) has a fixed name: the migrations
-- GRANT the application's privileges to it.
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

-- The three roles, created only when missing.
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
