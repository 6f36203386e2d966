"""SECURITY DEFINER functions cannot be made to run a caller's code as the schema owner.

The attack: a login role (the services' ``nvsentinel``, or the pruner) creates,
in its own temporary schema, a domain named like a type a SECURITY DEFINER
function uses (``pg_temp.timestamptz``, ``pg_temp.text``, ...), whose CHECK
calls the attacker's function, then calls the SECURITY DEFINER function. A
function with ``SET search_path = pg_catalog, public`` (pg_temp not named)
searches the caller's temporary schema *first* for types and relations, so an
unqualified type in its body resolves to the domain, the CHECK runs inside the
function, and the attacker's code runs as ``nvsentinel_migrator``, the owner
of every table. Here it grants itself DELETE and TRUNCATE on the change log.

Two defences, each enough on its own, both in place: ``search_path =
pg_catalog, public, pg_temp`` (pg_temp searched last) on every SECURITY DEFINER
function, and schema-qualified types in their bodies. The control tests run the
same attack against a scratch copy of ``datastore_changelog_prune`` in the form
it had before (unqualified types, pg_temp not named), where it succeeds, and
against a copy with unqualified types but pg_temp last, where it fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from devsupport.postgres import APP_USER, MIGRATION_USER, PostgresDatabase
from tests.datastore.conftest import apply_schema

pytestmark = pytest.mark.datastore

Conn = psycopg.Connection[tuple[object, ...]]

PRUNER = "nvsentinel_pruner"

#: Type names the SECURITY DEFINER functions use that the grammar does not map
#: to pg_catalog itself (``bigint``, ``interval`` and the like it does).
SHADOWED_TYPES = ("timestamptz", "text", "int8", "xid8")

#: The attacker's code: records who it ran as and, when that is the owner,
#: grants the session's login DELETE and TRUNCATE on the change log.
ATTACK_SETUP = (
    """
CREATE FUNCTION pg_temp.nvs_attack() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('nvs_attack.ran_as',
        pg_catalog.concat_ws(',', pg_catalog.current_setting('nvs_attack.ran_as', true),
                             current_user), false);
    IF current_user = 'nvsentinel_migrator' THEN
        EXECUTE pg_catalog.format('GRANT DELETE, TRUNCATE ON public.datastore_changelog TO %I',
                                  session_user);
    END IF;
    RETURN true;
END
$$
""",
    *(
        f"CREATE DOMAIN pg_temp.{t} AS pg_catalog.{t} CHECK (pg_temp.nvs_attack())"
        for t in SHADOWED_TYPES
    ),
)

#: Keyword type names the SQL grammar itself maps to pg_catalog's types.
_GRAMMAR_TYPES = re.compile(
    r"^(bigint|integer|int|smallint|boolean|interval|numeric|decimal|real|float"
    r"|double precision|character varying|varchar|character|char|bit"
    r"|timestamp|timestamp with time zone|timestamp without time zone"
    r"|time|time with time zone|time without time zone)(\s*\([^)]*\))?(\[\])*$"
)


def ensure_pruner_role(database: PostgresDatabase) -> None:
    """The pruner login (bootstrap.sql makes it; made here if this bootstrap does not)."""
    with psycopg.connect(database.superuser_conninfo(), autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN CREATE ROLE nvsentinel_pruner LOGIN; "
            "EXCEPTION WHEN duplicate_object THEN END $$"
        )


@pytest.fixture
def database(postgres_database: PostgresDatabase) -> PostgresDatabase:
    """A database with the schema, the pruner role existing before the migrations ran."""
    ensure_pruner_role(postgres_database)
    apply_schema(postgres_database)
    with psycopg.connect(postgres_database.conninfo(user=APP_USER), autocommit=True) as conn:
        for n in range(3):
            conn.execute(
                "INSERT INTO health_events (document) VALUES (%s::jsonb)",
                (f'{{"healthevent": {{"nodename": "n{n}"}}}}',),
            )
    with psycopg.connect(postgres_database.superuser_conninfo(), autocommit=True) as conn:
        # Old enough for a 7-day prune to delete them (and fire the pruned-frontier trigger).
        conn.execute("UPDATE datastore_changelog SET changed_at = changed_at - interval '30 days'")
    return postgres_database


@pytest.fixture
def superuser(database: PostgresDatabase) -> Iterator[Conn]:
    with psycopg.connect(database.superuser_conninfo(), autocommit=True) as conn:
        yield conn


def attacker(database: PostgresDatabase, user: str) -> Conn:
    """A TLS session as ``user`` (its client certificate) with the attack laid out."""
    conn = psycopg.connect(database.conninfo(user=user), autocommit=True)
    for statement in ATTACK_SETUP:
        conn.execute(statement)
    return conn


def ran_as(conn: Conn) -> list[str]:
    row = conn.execute("SELECT current_setting('nvs_attack.ran_as', true)").fetchone()
    assert row is not None
    return [r for r in str(row[0] or "").split(",") if r]


def changelog_privileges(superuser: Conn, user: str) -> list[str]:
    return [
        p
        for p in ("DELETE", "TRUNCATE", "UPDATE")
        if superuser.execute(
            "SELECT has_table_privilege(%s, 'public.datastore_changelog', %s)", (user, p)
        ).fetchone()
        == (True,)
    ]


# -- the attack against the functions as they are -------------------------------------


@pytest.mark.parametrize(
    ("user", "statement"),
    [
        (PRUNER, "SELECT * FROM datastore_changelog_prune('7 days')"),
        (PRUNER, "SELECT * FROM datastore_changelog_prune('7 days', 100)"),
        (APP_USER, "SELECT * FROM datastore_consumer_lag()"),
        (APP_USER, "SELECT * FROM datastore_changelog_stats()"),
        # datastore_changelog_position runs inside the change trigger of a write.
        (APP_USER, 'INSERT INTO health_events (document) VALUES (\'{"_id": "attack"}\')'),
    ],
    ids=["prune", "prune_batch", "consumer_lag", "changelog_stats", "changelog_position"],
)
def test_temp_schema_domain_does_not_run_the_callers_code_as_the_owner(
    database: PostgresDatabase, superuser: Conn, user: str, statement: str
) -> None:
    with attacker(database, user) as conn:
        conn.execute(statement)
        assert MIGRATION_USER not in ran_as(conn)
    assert changelog_privileges(superuser, user) == []
    if "prune" in statement:
        # The call did its work: the changes were deleted and the frontier raised
        # (datastore_changelog_record_pruned ran too, without the attacker's code).
        assert superuser.execute("SELECT count(*) FROM datastore_changelog").fetchone() == (0,)
        assert superuser.execute("SELECT count(*) FROM datastore_changelog_pruned").fetchone() == (
            1,
        )


def test_the_services_role_cannot_even_call_prune_to_attempt_it(
    database: PostgresDatabase, superuser: Conn
) -> None:
    with attacker(database, APP_USER) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM datastore_changelog_prune('7 days')")
        assert MIGRATION_USER not in ran_as(conn)
    assert changelog_privileges(superuser, APP_USER) == []
    assert superuser.execute("SELECT count(*) FROM datastore_changelog").fetchone() == (3,)


# -- controls: the same attack against scratch copies of prune --------------------------


def scratch_prune(database: PostgresDatabase, name: str, *, pg_temp_last: bool) -> None:
    """A copy of datastore_changelog_prune (the batched form of 0005, which does the work)
    with unqualified types, callable by the services."""
    with psycopg.connect(database.conninfo(user=MIGRATION_USER), autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_get_functiondef("
            "'datastore_changelog_prune(interval, integer)'::regprocedure)"
        ).fetchone()
        assert row is not None
        definition = str(row[0])
        assert "SET search_path TO 'pg_catalog', 'public', 'pg_temp'" in definition
        if not pg_temp_last:
            definition = definition.replace(
                "SET search_path TO 'pg_catalog', 'public', 'pg_temp'",
                "SET search_path TO 'pg_catalog', 'public'",
            )
        definition = definition.replace("public.datastore_changelog_prune(", f"public.{name}(")
        unqualified = re.sub(rf"pg_catalog\.({'|'.join(SHADOWED_TYPES)})\b", r"\1", definition)
        assert unqualified != definition
        conn.execute(unqualified)
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION {}(interval, integer) TO nvsentinel_app").format(
                sql.Identifier(name)
            )
        )


def test_control_the_attack_succeeds_on_the_old_form_without_pg_temp_last(
    database: PostgresDatabase, superuser: Conn
) -> None:
    scratch_prune(database, "scratch_prune_vulnerable", pg_temp_last=False)
    with attacker(database, APP_USER) as conn:
        conn.execute("SELECT * FROM scratch_prune_vulnerable('7 days', NULL)")
        assert MIGRATION_USER in ran_as(conn)
        # The attacker now deletes the whole history with its own privileges.
        conn.execute("DELETE FROM datastore_changelog")
    assert changelog_privileges(superuser, APP_USER) == ["DELETE", "TRUNCATE"]


def test_control_pg_temp_last_alone_stops_the_attack_on_unqualified_types(
    database: PostgresDatabase, superuser: Conn
) -> None:
    scratch_prune(database, "scratch_prune_pg_temp_last", pg_temp_last=True)
    with attacker(database, APP_USER) as conn:
        conn.execute("SELECT * FROM scratch_prune_pg_temp_last('7 days', NULL)")
        assert MIGRATION_USER not in ran_as(conn)
    assert changelog_privileges(superuser, APP_USER) == []


# -- the catalog check ------------------------------------------------------------------


def _strip(source: str) -> str:
    """The body without comments and string literals."""
    source = re.sub(r"--[^\n]*", "", source)
    return re.sub(r"'(?:[^']|'')*'", "''", source)


def _search_path(config: list[str] | None) -> list[str] | None:
    for entry in config or []:
        key, _, value = entry.partition("=")
        if key == "search_path":
            return [p.strip().strip('"') for p in value.split(",")]
    return None


def _unqualified_types(language: str, source: str) -> list[str]:
    """Type names in declarations and casts a temporary schema could shadow."""
    body = _strip(source)
    types: list[str] = []
    if language == "plpgsql":
        for block in re.finditer(r"\bDECLARE\b(.*?)\bBEGIN\b", body, re.S | re.I):
            for declaration in block.group(1).split(";"):
                match = re.match(
                    r"\s*\w+\s+(?:CONSTANT\s+)?(.+?)\s*(?:\bNOT\s+NULL\b|\bCOLLATE\b|:=|=|"
                    r"\bDEFAULT\b|$)",
                    declaration,
                    re.S | re.I,
                )
                if match:
                    types.append(" ".join(match.group(1).split()))
    types += re.findall(r"::\s*([\w.]+(?:\s+(?:with|without)\s+time\s+zone)?)", body, re.I)
    return [
        t
        for t in types
        if not re.match(r"^(pg_catalog|public)\.\w+(\[\])*$", t, re.I)
        and not _GRAMMAR_TYPES.match(t.lower())
    ]


#: Every schema but the system's own.
_USER_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'"
)


def unsafe_security_definer_functions(conn: Conn) -> dict[str, list[str]]:
    """Per SECURITY DEFINER function (schema public and any other of ours), what makes it
    shadowable; an empty list when nothing does."""
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig, l.lanname, p.prosrc "
        "  FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace "
        "  JOIN pg_language AS l ON l.oid = p.prolang "
        f" WHERE {_USER_SCHEMAS} AND p.prosecdef ORDER BY 1"
    ).fetchall()
    problems: dict[str, list[str]] = {}
    for name, config, language, source in rows:
        found = []
        path = _search_path(config)  # type: ignore[arg-type]
        if path is None:
            found.append("no SET search_path")
        elif path[0] != "pg_catalog" or path[-1] != "pg_temp":
            found.append(f"search_path {', '.join(path)} (pg_catalog first, pg_temp last)")
        found += [f"unqualified type {t}" for t in _unqualified_types(str(language), str(source))]
        problems[str(name)] = found
    return problems


def test_every_security_definer_function_has_pg_temp_last_and_qualified_types(
    schema_database: PostgresDatabase, superuser_conn: Conn
) -> None:
    problems = unsafe_security_definer_functions(superuser_conn)
    assert {name: found for name, found in problems.items() if found} == {}
    assert set(problems) >= {
        "datastore_changelog_prune(interval)",
        "datastore_consumer_lag()",
        "datastore_changelog_stats()",
        "datastore_changelog_record_pruned()",
        "datastore_changelog_position()",
    }
    # A function that is not SECURITY DEFINER but sets a search_path (datastore_adopt_restore)
    # names pg_temp last too.
    configured = superuser_conn.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc AS p "
        "  JOIN pg_namespace AS n ON n.oid = p.pronamespace "
        f" WHERE {_USER_SCHEMAS} AND NOT p.prosecdef AND p.proconfig IS NOT NULL"
    ).fetchall()
    paths = {str(name): _search_path(config) for name, config in configured}  # type: ignore[arg-type]
    assert paths == {"datastore_adopt_restore()": ["pg_catalog", "public", "pg_temp"]}


def test_the_catalog_check_finds_a_function_without_pg_temp_last(
    schema_database: PostgresDatabase, superuser_conn: Conn
) -> None:
    with psycopg.connect(schema_database.conninfo(user=MIGRATION_USER), autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION scratch_unsafe() RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER "
            "SET search_path = pg_catalog, public AS $$ "
            "DECLARE at timestamptz := now(); n pg_catalog.int8; ok bigint; "
            "BEGIN RETURN 1::int8; END $$"
        )
        conn.execute(
            "CREATE FUNCTION scratch_no_path() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
            "AS 'SELECT 1::bigint'"
        )
    problems = unsafe_security_definer_functions(superuser_conn)
    assert problems["scratch_unsafe()"] == [
        "search_path pg_catalog, public (pg_catalog first, pg_temp last)",
        "unqualified type timestamptz",
        "unqualified type int8",
    ]
    assert problems["scratch_no_path()"] == ["no SET search_path"]
