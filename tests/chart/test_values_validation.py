"""Bad values are refused before anything is applied, with a sentence that names the
key, the value and what is expected."""

from __future__ import annotations

import pytest

from tests.fixtures import chart

pytestmark = pytest.mark.chart

PG = ("global.datastore.provider=postgresql", "postgresql.enabled=true", "mongodb.enabled=false")
EXTERNAL_PG = (
    "global.datastore.provider=postgresql",
    "postgresql.enabled=false",
    "mongodb.enabled=false",
    "global.datastore.connection.host=pg.example.internal",
)
PASSWORD = (
    *EXTERNAL_PG,
    "global.datastore.credentialsFromSecret.name=db",
    "global.datastore.caFromSecret.name=db-ca",
    "schema.credentialsFromSecret.name=db-migrator",
    "changelogRetention.credentialsFromSecret.name=db-pruner",
)

# (id, --set assignments, fragments the error must contain)
REFUSED = [
    (
        "postgresql-without-subchart-or-host",
        ("global.datastore.provider=postgresql", "mongodb.enabled=false"),
        [
            'global.datastore.provider is "postgresql"',
            "postgresql.enabled is false",
            "global.datastore.connection.host is empty",
        ],
    ),
    (
        "mongodb-without-subchart-or-host",
        ("mongodb.enabled=false",),
        [
            'global.datastore.provider is "mongodb"',
            "mongodb.enabled is false",
            "global.datastore.connection.host is empty",
        ],
    ),
    (
        "both-subcharts-enabled",
        ("postgresql.enabled=true",),
        ["postgresql.enabled and mongodb.enabled are both true", "postgresql.enabled=false"],
    ),
    (
        "other-providers-subchart-left-on",
        ("global.datastore.provider=postgresql", "global.datastore.connection.host=pg.example"),
        [
            'mongodb.enabled is true but global.datastore.provider is "postgresql"',
            "mongodb.enabled=false",
        ],
    ),
    (
        "sslmode-disable-with-client-certificates",
        (*PG, "global.datastore.connection.sslmode=disable"),
        ['global.datastore.connection.sslmode is "disable"', "TLS only", "verify-full"],
    ),
    (
        "credentials-with-mongodb",
        ("global.datastore.credentialsFromSecret.name=db",),
        [
            'global.datastore.credentialsFromSecret.name is "db"',
            'global.datastore.provider is "mongodb"',
        ],
    ),
    (
        "credentials-with-in-cluster-postgresql",
        (*PG, "global.datastore.credentialsFromSecret.name=db"),
        [
            'global.datastore.credentialsFromSecret.name is "db"',
            "postgresql.enabled is true",
            "client certificates",
        ],
    ),
    (
        "credentials-with-client-certificate-paths",
        (*PASSWORD, "global.datastore.connection.sslcert=/certs/tls.crt"),
        [
            "global.datastore.connection.sslcert/sslkey are set",
            '"/certs/tls.crt"',
            "no client certificate is mounted",
        ],
    ),
    (
        "credentials-verify-full-without-ca",
        (
            *EXTERNAL_PG,
            "global.datastore.credentialsFromSecret.name=db",
            "schema.credentialsFromSecret.name=db-migrator",
        ),
        [
            'global.datastore.connection.sslmode is "verify-full"',
            "global.datastore.caFromSecret.name",
        ],
    ),
    (
        "credentials-without-migration-credentials",
        (
            *EXTERNAL_PG,
            "global.datastore.credentialsFromSecret.name=db",
            "global.datastore.caFromSecret.name=db-ca",
        ),
        [
            "schema.credentialsFromSecret.name is empty",
            '"nvsentinel_migrator"',
            "schema.job.enabled=false",
        ],
    ),
    (
        "password-without-verification",
        (*PASSWORD, "global.datastore.connection.sslmode=require"),
        ['global.datastore.connection.sslmode is "require"', "password auth", "verify-full"],
    ),
    (
        "password-over-plaintext",
        (*PASSWORD, "global.datastore.connection.sslmode=disable"),
        ['global.datastore.connection.sslmode is "disable"', "password auth", "verify-full"],
    ),
    (
        "password-without-pruner-credentials",
        (*PASSWORD[:-1],),
        [
            "changelogRetention.credentialsFromSecret.name is empty",
            "nvsentinel_pruner",
            "changelogRetention.enabled=false",
        ],
    ),
    (
        "app-user-is-the-migrator",
        (
            "global.datastore.provider=postgresql",
            "postgresql.enabled=true",
            "mongodb.enabled=false",
            "global.datastore.connection.username=nvsentinel_migrator",
            "postgresql.auth.appUser=nvsentinel_migrator",
        ),
        [
            "global.datastore.connection.username (and postgresql.auth.appUser)",
            '"nvsentinel_migrator"',
            "the migration role (schema.migrationUsername)",
        ],
    ),
    (
        "app-user-is-the-backup-role",
        (
            "global.datastore.provider=postgresql",
            "postgresql.enabled=true",
            "mongodb.enabled=false",
            "global.datastore.connection.username=nvsentinel_backup",
            "postgresql.auth.appUser=nvsentinel_backup",
        ),
        ['"nvsentinel_backup"', "the backup role (postgresql.auth.backupUser)"],
    ),
    (
        "app-user-is-the-monitor-role",
        (
            "global.datastore.provider=postgresql",
            "postgresql.enabled=true",
            "mongodb.enabled=false",
            "global.datastore.connection.username=nvsentinel_monitor",
            "postgresql.auth.appUser=nvsentinel_monitor",
        ),
        ['"nvsentinel_monitor"', "the monitor role (postgresql.auth.monitorUser)"],
    ),
    (
        "app-user-is-the-superuser",
        (*EXTERNAL_PG, "global.datastore.connection.username=postgres"),
        ["global.datastore.connection.username", '"postgres"', "the superuser"],
    ),
    (
        "service-user-is-the-pruner",
        (*EXTERNAL_PG, "services.node-drainer.datastoreUser=nvsentinel_pruner"),
        ["services.node-drainer.datastoreUser", '"nvsentinel_pruner"', "the pruner role"],
    ),
    (
        "service-user-is-the-migrator",
        (*EXTERNAL_PG, "services.fault-quarantine.datastoreUser=nvsentinel_migrator"),
        ["services.fault-quarantine.datastoreUser", '"nvsentinel_migrator"', "migration role"],
    ),
    (
        "two-services-share-a-user",
        (
            *EXTERNAL_PG,
            "services.fault-quarantine.datastoreUser=nvsentinel_shared",
            "services.node-drainer.datastoreUser=nvsentinel_shared",
        ),
        [
            "services.node-drainer.datastoreUser",
            '"nvsentinel_shared"',
            "services.fault-quarantine.datastoreUser",
            "distinct",
        ],
    ),
    (
        "service-user-is-the-shared-login",
        (*EXTERNAL_PG, "services.csp-health-monitor.datastoreUser=nvsentinel"),
        [
            "services.csp-health-monitor.datastoreUser",
            '"nvsentinel"',
            "global.datastore.connection.username",
        ],
    ),
    (
        "password-service-user-is-the-shared-login",
        (
            *PASSWORD,
            "services.node-drainer.credentialsFromSecret.name=db-drainer",
            "services.node-drainer.datastoreUser=nvsentinel",
        ),
        ["services.node-drainer.datastoreUser", '"nvsentinel"', "distinct"],
    ),
    (
        "ca-secret-without-credentials",
        (*EXTERNAL_PG, "global.datastore.caFromSecret.name=db-ca"),
        [
            'global.datastore.caFromSecret.name is "db-ca"',
            "global.datastore.credentialsFromSecret.name is empty",
        ],
    ),
    (
        "username-differs-from-subchart-app-user",
        (*PG, "global.datastore.connection.username=svc"),
        [
            'postgresql.auth.appUser is "nvsentinel"',
            'global.datastore.connection.username is "svc"',
        ],
    ),
    (
        "migration-role-differs-from-subchart",
        (*PG, "schema.migrationUsername=owner"),
        [
            'postgresql.auth.migrationUser is "nvsentinel_migrator"',
            'schema.migrationUsername is "owner"',
        ],
    ),
    (
        "database-differs-from-subchart",
        (*PG, "global.datastore.connection.database=other"),
        [
            'postgresql.auth.database is "nvsentinel"',
            'global.datastore.connection.database is "other"',
        ],
    ),
    (
        "mongodb-user-without-x509-user",
        ("global.datastore.connection.username=svc",),
        ['global.datastore.connection.username is "svc"', '"CN=svc"', "mongodb.auth.x509Users"],
    ),
    (
        "port-differs-from-the-in-cluster-store",
        (*PG, "global.datastore.connection.port=6432"),
        ["global.datastore.connection.port is 6432", "listens on 5432"],
    ),
    # values.schema.json
    (
        "unknown-provider",
        ("global.datastore.provider=mysql",),
        ["/global/datastore/provider", "'mongodb', 'postgresql'"],
    ),
    (
        "unknown-sslmode",
        ("global.datastore.connection.sslmode=prefer",),
        [
            "/global/datastore/connection/sslmode",
            "'disable', 'require', 'verify-ca', 'verify-full'",
        ],
    ),
    (
        "port-out-of-range",
        ("global.datastore.connection.port=70000",),
        ["/global/datastore/connection/port", "65"],
    ),
    (
        "unknown-service",
        ("services.gpu-health-monitor.enabled=true",),
        ["/services", "'gpu-health-monitor' not allowed"],
    ),
    (
        "misspelled-key",
        ("global.datastore.conection.host=x",),
        ["/global/datastore", "'conection' not allowed"],
    ),
    (
        "username-not-an-identifier",
        ("global.datastore.connection.username=a b",),
        ["/global/datastore/connection/username"],
    ),
]


@pytest.mark.parametrize(
    ("assignments", "fragments"),
    [pytest.param(a, f, id=i) for i, a, f in REFUSED],
)
def test_bad_values_are_refused_with_a_message_naming_key_and_value(
    assignments: tuple[str, ...], fragments: list[str]
) -> None:
    with pytest.raises(chart.RenderError) as refused:
        chart.render([], assignments)
    message = str(refused.value)
    for fragment in fragments:
        assert fragment in message, message


def test_release_names_too_long_for_the_store_services_are_refused() -> None:
    # Helm allows 53 characters; "<release>-postgresql-hl" must fit in 63.
    with pytest.raises(chart.RenderError) as refused:
        chart.render(["values-postgresql.yaml"], [], release="n" * 51)
    assert f'release name "{"n" * 51}" is 51 characters' in str(refused.value)
    assert "at most 49" in str(refused.value)
    assert chart.render(["values-postgresql.yaml"], [], release="n" * 49)


@pytest.mark.parametrize(
    "assignments",
    [
        pytest.param(PASSWORD, id="external-postgresql-with-password"),
        pytest.param((*EXTERNAL_PG,), id="external-postgresql-with-client-certificates"),
        pytest.param(
            ("mongodb.enabled=false", "global.datastore.connection.host=mongo.example"),
            id="external-mongodb",
        ),
    ],
)
def test_consistent_external_configurations_are_accepted(assignments: tuple[str, ...]) -> None:
    assert chart.render([], assignments)
