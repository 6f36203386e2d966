"""The PostgreSQL subchart on its own and inside the umbrella chart: TLS-only client
access with certificates, the server key PostgreSQL accepts and reloads, the
NetworkPolicy, the optional exporter and backups, and a strict values schema."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from typing import Any

import pytest

from tests.chart.subcharts import (
    container,
    env,
    mount_of,
    parse_pg_hba,
    parse_postgresql_conf,
    pod_labels,
    pod_spec,
    render_error,
    render_subchart,
    selects,
    subchart_path,
    unread_values,
    volume,
)
from tests.fixtures import chart

pytestmark = pytest.mark.chart

CLIENT_LABEL = {"nvsentinel.nvidia.com/datastore-client": "true"}
PASSWORD_MODE = ("auth.passwordAuthentication.enabled=true", "auth.password=nvsentinel-dev")
EVERYTHING = ("metrics.enabled=true", "backup.enabled=true", *PASSWORD_MODE)
# Bits PostgreSQL refuses on a root-owned key: group write/execute, anything for others.
REFUSED_FOR_ROOT_OWNED_KEY = 0o020 | 0o010 | 0o007
# The kubelet ORs this into Secret volume files when the pod has an fsGroup.
KUBELET_FSGROUP_READ = 0o440


def render(*set_values: str) -> list[dict[str, Any]]:
    return render_subchart("postgresql", set_values)


def config_files(objects: list[dict[str, Any]], release: str = "x") -> dict[str, str]:
    data: dict[str, str] = chart.find(objects, "ConfigMap", f"{release}-postgresql-config")["data"]
    return data


def statefulset(objects: list[dict[str, Any]], release: str = "x") -> dict[str, Any]:
    return chart.find(objects, "StatefulSet", f"{release}-postgresql")


def server(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return container(pod_spec(statefulset(objects)), "postgresql")


# --- names -----------------------------------------------------------------


def test_names_follow_the_contract_under_release_nvsentinel() -> None:
    objects = render_subchart("postgresql", release="nvsentinel", namespace="nvsentinel")
    sts = statefulset(objects, "nvsentinel")
    assert sts["spec"]["serviceName"] == "nvsentinel-postgresql-hl"
    assert sts["spec"]["replicas"] == 1
    client = chart.find(objects, "Service", "nvsentinel-postgresql")
    headless = chart.find(objects, "Service", "nvsentinel-postgresql-hl")
    assert [p["port"] for p in client["spec"]["ports"]] == [5432]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    pod = pod_labels(sts)
    assert selects(client["spec"]["selector"], pod)
    assert selects(headless["spec"]["selector"], pod)
    tls = volume(pod_spec(sts), "server-tls")
    assert tls["secret"]["secretName"] == "nvsentinel-postgresql-server-tls"


def test_selector_labels_leave_out_the_version_so_image_upgrades_keep_the_selector() -> None:
    old = statefulset(render())["spec"]["selector"]["matchLabels"]
    new = statefulset(render("image.tag=17.7-bookworm"))["spec"]["selector"]["matchLabels"]
    assert (
        old
        == new
        == {
            "app.kubernetes.io/name": "postgresql",
            "app.kubernetes.io/instance": "x",
            "app.kubernetes.io/component": "primary",
        }
    )


# --- pg_hba ------------------------------------------------------------------


def test_pg_hba_admits_remote_clients_only_over_tls_with_a_certificate() -> None:
    rules = parse_pg_hba(config_files(render())["pg_hba.conf"])
    assert {r.type for r in rules} <= {"local", "hostssl"}, "a non-TLS remote rule exists"
    remote = [r for r in rules if r.type == "hostssl"]
    assert {r.method for r in remote} == {"cert", "reject"}
    cert_addresses = {r.address for r in remote if r.method == "cert" and r.users == ("all",)}
    assert cert_addresses == {"0.0.0.0/0", "::/0"}


def test_pg_hba_rejects_a_remote_superuser_before_any_rule_that_could_admit_it() -> None:
    rules = parse_pg_hba(config_files(render(*PASSWORD_MODE))["pg_hba.conf"])
    remote = [r for r in rules if r.type == "hostssl"]
    first_reject = min(i for i, r in enumerate(remote) if r.method == "reject")
    first_admit = min(i for i, r in enumerate(remote) if r.method != "reject")
    assert first_reject < first_admit
    rejected = {r.address for r in remote if r.method == "reject" and r.users == ("postgres",)}
    assert rejected == {"0.0.0.0/0", "::/0"}


def test_pg_hba_has_no_password_rule_unless_password_authentication_is_on() -> None:
    rules = parse_pg_hba(config_files(render())["pg_hba.conf"])
    methods = {r.method for r in rules}
    assert not methods & {"scram-sha-256", "md5", "password", "trust"}


def test_password_rules_cover_only_the_application_role_from_the_pod_loopback() -> None:
    rules = parse_pg_hba(config_files(render(*PASSWORD_MODE))["pg_hba.conf"])
    scram = [r for r in rules if r.method == "scram-sha-256"]
    assert {(r.type, r.users, r.address) for r in scram} == {
        ("hostssl", ("nvsentinel",), "127.0.0.1/32"),
        ("hostssl", ("nvsentinel",), "::1/128"),
    }
    # First match wins: the password rules must come before the catch-all cert rules.
    last_scram = max(i for i, r in enumerate(rules) if r.method == "scram-sha-256")
    first_cert = min(i for i, r in enumerate(rules) if r.method == "cert")
    assert last_scram < first_cert
    assert {r.type for r in rules} <= {"local", "hostssl"}


def test_password_users_and_addresses_follow_values() -> None:
    objects = render(
        *PASSWORD_MODE,
        "auth.passwordAuthentication.users={nvsentinel,nvsentinel_migrator}",
        "auth.passwordAuthentication.addresses={10.0.0.0/8}",
    )
    rules = parse_pg_hba(config_files(objects)["pg_hba.conf"])
    scram = [r for r in rules if r.method == "scram-sha-256"]
    assert [(r.users, r.address) for r in scram] == [
        (("nvsentinel", "nvsentinel_migrator"), "10.0.0.0/8")
    ]


def ident_map(text: str) -> list[list[str]]:
    """The records of a pg_ident.conf (comments and blank lines dropped)."""
    return [fields for line in text.splitlines() if (fields := line.split("#", 1)[0].split())]


def test_exporter_role_reaches_the_socket_only_through_the_ident_map() -> None:
    files = config_files(render())
    rules = parse_pg_hba(files["pg_hba.conf"])
    local = {(r.database, r.users, r.method, r.options) for r in rules if r.type == "local"}
    assert local == {
        ("all", ("postgres",), "peer", ()),
        ("nvsentinel", ("nvsentinel_monitor",), "peer", ("map=exporter",)),
    }
    assert ident_map(files["pg_ident.conf"]) == [["exporter", "nobody", "nvsentinel_monitor"]]


def test_exporter_runs_under_its_own_uid_so_peer_authentication_cannot_make_it_postgres() -> None:
    """The exporter's uid is not the server's: peer authentication reports its own OS
    user (`nobody`, uid 65534 in the postgres image), which the ident map admits as
    the monitor role and nothing else; `local all postgres peer` needs the OS user
    postgres, which only the server's uid is."""
    objects = render("metrics.enabled=true")
    spec = pod_spec(statefulset(objects))
    server_uid = spec["securityContext"]["runAsUser"]
    exporter = container(spec, "metrics")
    security = exporter["securityContext"]
    assert security["runAsUser"] == 65534 != server_uid
    assert security["runAsGroup"] == 65534
    for other in ("postgresql", "reloader"):
        assert "runAsUser" not in container(spec, other)["securityContext"], other
    # The rest of the hardening is kept.
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    files = config_files(objects)
    mapped = [m for m in ident_map(files["pg_ident.conf"]) if m[0] == "exporter"]
    assert mapped == [["exporter", "nobody", "nvsentinel_monitor"]]
    peer_rules = [r for r in parse_pg_hba(files["pg_hba.conf"]) if r.method == "peer"]
    for rule in peer_rules:
        # A rule without the map takes the OS user name as the role: only postgres, whose
        # OS user is the server's uid.
        assert "map=exporter" in rule.options or rule.users == ("postgres",), rule
    dsn = dict(part.split("=", 1) for part in env(exporter)["DATA_SOURCE_NAME"].split())
    assert dsn["user"] == "nvsentinel_monitor" and dsn["dbname"] == "nvsentinel"


def test_exporter_under_the_server_uid_or_as_postgres_is_refused() -> None:
    message = render_error(
        "postgresql", ["metrics.enabled=true", "metrics.securityContext.runAsUser=999"]
    )
    assert "metrics.securityContext.runAsUser" in message and "postgres" in message
    message = render_error("postgresql", ["metrics.osUser=postgres"])
    assert "/metrics/osUser" in message


def test_hostssl_rules_for_the_nvsentinel_roles_name_the_nvsentinel_database() -> None:
    """Every rule that can admit a remote client names the NVSentinel database; only the
    superuser's reject rules say `all` (they refuse every database)."""
    for settings in ((), PASSWORD_MODE, ("auth.database=events",)):
        database = "events" if settings == ("auth.database=events",) else "nvsentinel"
        rules = parse_pg_hba(config_files(render(*settings))["pg_hba.conf"])
        for rule in rules:
            if rule.type == "hostssl" and rule.method != "reject":
                assert rule.database == database, (settings, rule)
            if rule.database == "all":
                assert rule.users == ("postgres",), (settings, rule)


def test_schema_refuses_a_pg_hba_keyword_as_the_database() -> None:
    message = render_error("postgresql", ["auth.database=all"])
    assert "/auth/database" in message


# --- TLS ---------------------------------------------------------------------


def test_tls_files_point_at_the_mounted_server_secret() -> None:
    objects = render()
    conf = parse_postgresql_conf(config_files(objects)["postgresql.conf"])
    assert conf["ssl"] == "on"
    assert conf["ssl_min_protocol_version"] == "TLSv1.2"
    spec = pod_spec(statefulset(objects))
    mount = mount_of(container(spec, "postgresql"), "server-tls")
    assert volume(spec, "server-tls")["secret"]["secretName"] == "x-postgresql-server-tls"
    for setting, key in (
        ("ssl_cert_file", "tls.crt"),
        ("ssl_key_file", "tls.key"),
        ("ssl_ca_file", "ca.crt"),
    ):
        assert conf[setting] == f"{mount['mountPath']}/{key}"
    assert mount["readOnly"] is True


def test_server_secret_name_can_be_overridden() -> None:
    spec = pod_spec(statefulset(render("tls.serverSecret=my-server-cert")))
    assert volume(spec, "server-tls")["secret"]["secretName"] == "my-server-cert"


def test_server_key_is_mounted_root_owned_with_a_mode_postgresql_accepts() -> None:
    spec = pod_spec(statefulset(render()))
    mode = volume(spec, "server-tls")["secret"]["defaultMode"]
    effective = mode | KUBELET_FSGROUP_READ
    assert effective & REFUSED_FOR_ROOT_OWNED_KEY == 0, oct(effective)
    security = spec["securityContext"]
    # fsGroup gives the files group 999; the server runs with that group.
    assert security["fsGroup"] == security["runAsUser"] == security["runAsGroup"] == 999
    assert security["runAsNonRoot"] is True


def test_reloader_sidecar_watches_the_served_files_and_reaches_the_local_socket() -> None:
    objects = render()
    spec = pod_spec(statefulset(objects))
    server_container = container(spec, "postgresql")
    reloader = container(spec, "reloader")
    conf = parse_postgresql_conf(config_files(objects)["postgresql.conf"])
    tls_dir = mount_of(reloader, "server-tls")["mountPath"]
    assert conf["ssl_key_file"].startswith(tls_dir + "/")
    assert env(reloader)["TLS_DIR"] == tls_dir
    socket_dir = conf["unix_socket_directories"]
    assert mount_of(server_container, "run")["mountPath"] == socket_dir
    assert mount_of(reloader, "run")["mountPath"] == socket_dir
    assert env(reloader)["PGHOST"] == socket_dir
    assert env(reloader)["PGUSER"] == "postgres"
    scripts = mount_of(reloader, "scripts")["mountPath"]
    assert reloader["command"] == [f"{scripts}/reloader.sh"]
    assert "PASSWORD_FILE" not in env(reloader)


def test_reloader_applies_the_application_password_from_the_secret_in_password_mode() -> None:
    objects = render(*PASSWORD_MODE)
    spec = pod_spec(statefulset(objects))
    reloader = container(spec, "reloader")
    auth_dir = mount_of(reloader, "auth")["mountPath"]
    assert env(reloader)["PASSWORD_FILE"] == f"{auth_dir}/password"
    assert env(reloader)["PASSWORD_ROLES"] == "nvsentinel"
    assert volume(spec, "auth")["secret"]["secretName"] == "x-postgresql"
    secret = chart.find(objects, "Secret", "x-postgresql")
    assert base64.b64decode(secret["data"]["password"]).decode() == "nvsentinel-dev"


# --- secrets and bootstrap ------------------------------------------------------


def test_passwords_live_in_a_secret_and_never_in_a_configmap() -> None:
    objects = render(*PASSWORD_MODE)
    secret = chart.find(objects, "Secret", "x-postgresql")
    admin = base64.b64decode(secret["data"]["postgres-password"]).decode()
    assert len(admin) >= 32
    for config_map in chart.of_kind(objects, "ConfigMap"):
        for text in config_map.get("data", {}).values():
            assert admin not in text and "nvsentinel-dev" not in text, config_map["metadata"]
    server_env = env(server(objects))
    assert "POSTGRES_PASSWORD" not in server_env
    auth_dir = mount_of(server(objects), "auth")["mountPath"]
    assert server_env["POSTGRES_PASSWORD_FILE"] == f"{auth_dir}/postgres-password"


def test_existing_secret_replaces_the_generated_one() -> None:
    objects = render("auth.existingSecret=ops-postgres", "auth.secretKeys.adminPasswordKey=su")
    assert not chart.of_kind(objects, "Secret")
    spec = pod_spec(statefulset(objects))
    assert volume(spec, "auth")["secret"]["secretName"] == "ops-postgres"
    assert env(server(objects))["POSTGRES_PASSWORD_FILE"].endswith("/su")


def test_bootstrap_runs_the_umbrella_sql_once_with_the_role_names() -> None:
    objects = render("auth.appUser=svc", "auth.migrationUser=owner")
    spec = pod_spec(statefulset(objects))
    server_container = container(spec, "postgresql")
    bootstrap = volume(spec, "bootstrap")["configMap"]
    assert bootstrap["name"] == "x-postgresql-initdb"
    assert bootstrap["items"] == [{"key": "bootstrap.sql", "path": "bootstrap.sql"}]
    sql_dir = mount_of(server_container, "bootstrap")["mountPath"]
    values = env(server_container)
    assert values["NVS_BOOTSTRAP_SQL"] == f"{sql_dir}/bootstrap.sql"
    assert (values["NVS_APP_USER"], values["NVS_MIGRATION_USER"]) == ("svc", "owner")
    assert values["POSTGRES_DB"] == "nvsentinel"
    # init-data-directory runs initdb.sh (next to it in the scripts volume) with the same
    # environment; no image entrypoint directory is involved.
    init = container({"containers": spec["initContainers"]}, "init-data-directory")
    assert env(init) == values
    assert mount_of(init, "bootstrap")["mountPath"] == sql_dir
    assert "initdb-scripts" not in {v["name"] for v in spec["volumes"]}


def test_server_starts_without_any_image_entrypoint() -> None:
    """An init container initialises the data directory with explicit commands and the
    server container runs the postgres binary, so the image needs only the server
    binaries on PATH (no entrypoint script of one particular image)."""
    objects = render()
    spec = pod_spec(statefulset(objects))
    server_container = container(spec, "postgresql")
    assert server_container["command"] == ["postgres"]
    assert server_container["args"][0] == "-c"
    init = container({"containers": spec["initContainers"]}, "init-data-directory")
    assert init["image"] == server_container["image"]
    scripts_dir = mount_of(init, "scripts")["mountPath"]
    assert init["command"] == [f"{scripts_dir}/init-data-directory.sh"]
    scripts = chart.find(objects, "ConfigMap", "x-postgresql-scripts")["data"]
    assert {"init-data-directory.sh", "initdb.sh"} <= set(scripts)
    # It initialises the same data directory, with the same settings, as the server uses.
    assert env(init) == env(server_container)
    assert mount_of(init, "data")["mountPath"] == mount_of(server_container, "data")["mountPath"]
    assert env(init)["PGDATA"].startswith(mount_of(init, "data")["mountPath"] + "/")
    assert mount_of(init, "auth")["mountPath"] == mount_of(server_container, "auth")["mountPath"]
    assert init["securityContext"] == server_container["securityContext"]


def test_init_container_has_no_bootstrap_mount_when_bootstrap_is_off() -> None:
    spec = pod_spec(statefulset(render("initdb.enabled=false")))
    init = container({"containers": spec["initContainers"]}, "init-data-directory")
    assert "bootstrap" not in {m["name"] for m in init["volumeMounts"]}


def test_bootstrap_can_be_switched_off_for_a_standalone_install() -> None:
    spec = pod_spec(statefulset(render("initdb.enabled=false")))
    assert "bootstrap" not in {v["name"] for v in spec["volumes"]}
    assert env(container(spec, "postgresql"))["NVS_BOOTSTRAP_SQL"] == ""


def test_data_directory_is_a_subdirectory_of_the_claimed_volume() -> None:
    sts = statefulset(render("persistence.size=20Gi"))
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    mount = mount_of(server(render("persistence.size=20Gi")), "data")["mountPath"]
    assert env(server(render()))["PGDATA"].startswith(mount + "/")
    ephemeral = statefulset(render("persistence.enabled=false"))
    assert "volumeClaimTemplates" not in ephemeral["spec"]
    assert "emptyDir" in volume(pod_spec(ephemeral), "data")


# --- pod hardening ----------------------------------------------------------------


@pytest.mark.parametrize("settings", [(), EVERYTHING], ids=["default", "everything-on"])
def test_every_container_runs_without_root_capabilities_or_a_writable_root(
    settings: tuple[str, ...],
) -> None:
    objects = render(*settings)
    workloads = [*chart.of_kind(objects, "StatefulSet"), *chart.of_kind(objects, "CronJob")]
    for workload in workloads:
        spec = pod_spec(workload)
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for item in [*spec.get("initContainers", []), *spec["containers"]]:
            security = item["securityContext"]
            assert security["capabilities"]["drop"] == ["ALL"], item["name"]
            assert security["allowPrivilegeEscalation"] is False, item["name"]
            assert security["readOnlyRootFilesystem"] is True, item["name"]


def test_probes_ask_pg_isready_over_tcp() -> None:
    server_container = server(render())
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = server_container[probe]["exec"]["command"]
        assert command[0] == "pg_isready", probe
        assert command[command.index("--host") + 1] == "127.0.0.1"


def test_disruption_budget_selects_the_server_pod() -> None:
    objects = render("pdb.minAvailable=1")
    budget = chart.find(objects, "PodDisruptionBudget", "x-postgresql")
    assert budget["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in budget["spec"]
    assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels(statefulset(objects)))


# --- NetworkPolicy ------------------------------------------------------------------


def test_network_policy_admits_only_datastore_clients_and_own_pods_to_5432() -> None:
    objects = render("backup.enabled=true")
    policy = chart.find(objects, "NetworkPolicy", "x-postgresql")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels(statefulset(objects)))
    [rule] = policy["ingress"]
    assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]
    peers = rule["from"]
    assert all(set(peer) == {"podSelector"} for peer in peers), "only same-namespace pod peers"
    assert peers[0]["podSelector"]["matchLabels"] == CLIENT_LABEL
    backup_pod = pod_labels(chart.find(objects, "CronJob", "x-postgresql-backup"))
    assert selects(peers[1]["podSelector"]["matchLabels"], backup_pod)
    unlabelled = {"app.kubernetes.io/name": "something-else", "app.kubernetes.io/instance": "x"}
    assert not any(selects(p["podSelector"]["matchLabels"], unlabelled) for p in peers)


SCRAPER_LABEL = {"nvsentinel.nvidia.com/metrics-scraper": "true"}


def metrics_peers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rules = chart.find(objects, "NetworkPolicy", "x-postgresql")["spec"]["ingress"]
    [metrics_rule] = [r for r in rules if r["ports"] == [{"port": 9187, "protocol": "TCP"}]]
    peers: list[dict[str, Any]] = metrics_rule["from"]
    return peers


def test_network_policy_admits_the_metrics_port_only_from_labelled_scrapers() -> None:
    rules = chart.find(render(), "NetworkPolicy", "x-postgresql")["spec"]["ingress"]
    assert all(r["ports"] != [{"port": 9187, "protocol": "TCP"}] for r in rules)

    peers = metrics_peers(render("metrics.enabled=true"))
    assert peers == [{"podSelector": {"matchLabels": SCRAPER_LABEL}}]
    # An unlabelled pod of the namespace (a datastore client, say) is not a scraper.
    assert not selects(peers[0]["podSelector"]["matchLabels"], CLIENT_LABEL)

    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    objects = render_subchart(
        "postgresql",
        (
            "metrics.enabled=true",
            "metrics.scraperSelector.app=my-scraper",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
            "networkPolicy.metricsFrom[0].podSelector.matchLabels.app\\.kubernetes\\.io/name=prometheus",
        ),
    )
    assert metrics_peers(objects) == [
        {"podSelector": {"matchLabels": {**SCRAPER_LABEL, "app": "my-scraper"}}},
        prometheus,
    ]


@pytest.mark.parametrize("settings", [(), EVERYTHING], ids=["default", "everything-on"])
def test_network_policy_lets_postgresql_egress_only_to_dns(settings: tuple[str, ...]) -> None:
    policy = chart.find(render(*settings), "NetworkPolicy", "x-postgresql")["spec"]
    assert "Egress" in policy["policyTypes"]
    assert policy["egress"] == [
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    ]
    dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}
    narrowed = render_subchart(
        "postgresql",
        (
            "networkPolicy.dnsPeers[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=kube-system",
        ),
    )
    [rule] = chart.find(narrowed, "NetworkPolicy", "x-postgresql")["spec"]["egress"]
    assert rule["to"] == [dns]
    assert {p["port"] for p in rule["ports"]} == {53}


# --- metrics and backup ------------------------------------------------------------------


def test_exporter_and_its_service_appear_only_with_metrics_enabled() -> None:
    plain = render()
    assert "metrics" not in {c["name"] for c in pod_spec(statefulset(plain))["containers"]}
    services = {s["metadata"]["name"] for s in chart.of_kind(plain, "Service")}
    assert "x-postgresql-metrics" not in services

    objects = render("metrics.enabled=true")
    spec = pod_spec(statefulset(objects))
    exporter = container(spec, "metrics")
    assert [p["containerPort"] for p in exporter["ports"]] == [9187]
    assert exporter["image"].startswith("quay.io/prometheuscommunity/postgres-exporter:v")
    dsn = dict(part.split("=", 1) for part in env(exporter)["DATA_SOURCE_NAME"].split())
    socket_dir = mount_of(exporter, "run")["mountPath"]
    assert dsn["host"] == socket_dir and dsn["user"] == "nvsentinel_monitor"
    service = chart.find(objects, "Service", "x-postgresql-metrics")
    assert [p["port"] for p in service["spec"]["ports"]] == [9187]
    assert selects(service["spec"]["selector"], pod_labels(statefulset(objects)))


def test_backup_cronjob_and_volume_appear_only_with_backup_enabled() -> None:
    plain = render()
    assert not chart.of_kind(plain, "CronJob")
    assert not chart.of_kind(plain, "PersistentVolumeClaim")

    objects = render("backup.enabled=true", "backup.schedule=30 3 * * *", "backup.retention=14")
    cron = chart.find(objects, "CronJob", "x-postgresql-backup")
    assert cron["spec"]["schedule"] == "30 3 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod_spec(cron)
    job = container(spec, "backup")
    values = env(job)
    assert values["RETENTION"] == "14"
    assert values["PGUSER"] == "nvsentinel_backup"
    assert values["PGSSLMODE"] == "verify-full"
    assert values["PGHOST"] == "x-postgresql.nvs.svc"
    cert_dir = mount_of(job, "backup-tls")["mountPath"]
    assert values["PGSSLKEY"] == f"{cert_dir}/tls.key"
    cert = volume(spec, "backup-tls")["secret"]
    assert cert["secretName"] == "x-postgresql-backup-cert"
    assert (cert["defaultMode"] | KUBELET_FSGROUP_READ) & REFUSED_FOR_ROOT_OWNED_KEY == 0
    claim = volume(spec, "backups")["persistentVolumeClaim"]["claimName"]
    pvc = chart.find(objects, "PersistentVolumeClaim", claim)
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_backup_uses_an_existing_claim_without_creating_one() -> None:
    objects = render("backup.enabled=true", "backup.persistence.existingClaim=nfs-backups")
    assert not chart.of_kind(objects, "PersistentVolumeClaim")
    spec = pod_spec(chart.find(objects, "CronJob", "x-postgresql-backup"))
    assert volume(spec, "backups")["persistentVolumeClaim"]["claimName"] == "nfs-backups"


# --- configuration and schema --------------------------------------------------------------


def test_extra_parameters_are_rendered_and_quoted() -> None:
    conf = parse_postgresql_conf(
        config_files(render("config.parameters.work_mem=64MB", "config.parameters.jit=false"))[
            "postgresql.conf"
        ]
    )
    assert conf["work_mem"] == "64MB"
    assert conf["jit"] == "off"


def test_schema_rejects_an_unknown_key_and_names_it() -> None:
    message = render_error("postgresql", ["replicaCount=3"])
    assert "replicaCount" in message


def test_schema_rejects_a_wrong_type_and_names_the_key() -> None:
    message = render_error("postgresql", ["backup.retention=seven"])
    assert "/backup/retention" in message and "integer" in message


def test_schema_refuses_overriding_a_setting_the_chart_manages() -> None:
    message = render_error("postgresql", ["config.parameters.ssl=off"])
    assert "/config/parameters/ssl" in message


@pytest.mark.parametrize(
    "value",
    ["1MB\nssl = off", "1MB\r\nssl = off", "1MB\\' ssl = off #"],
    ids=["newline", "crlf", "backslash"],
)
def test_schema_refuses_a_parameter_value_that_could_add_a_setting(value: str) -> None:
    result = chart_subprocess_set_string("config.parameters.work_mem", value)
    assert result.returncode != 0, "rendered"
    message = result.stderr + result.stdout
    assert "/config/parameters/work_mem" in message and "does not match pattern" in message


def test_parameter_values_with_quotes_stay_one_quoted_setting() -> None:
    conf_text = config_files(
        render_subchart("postgresql", ('config.parameters.search_path="$user"\\, public',))
    )["postgresql.conf"]
    assert parse_postgresql_conf(conf_text)["search_path"] == '"$user", public'
    quoted = render_subchart("postgresql", ("config.parameters.application_name=it's",))
    assert "application_name = 'it''s'" in config_files(quoted)["postgresql.conf"]


def chart_subprocess_set_string(key: str, value: str) -> subprocess.CompletedProcess[str]:
    """helm template of the subchart with one string value given in a values file
    (so neither the shell nor --set's escapes touch it)."""
    tree: dict[str, Any] = {}
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values:
        json.dump(tree, values)
        values.flush()
        cmd = [str(chart.HELM), "template", "x", str(subchart_path("postgresql"))]
        return subprocess.run(
            [*cmd, "--values", values.name], capture_output=True, text=True, check=False
        )


def test_schema_refuses_a_tls_version_below_1_2() -> None:
    message = render_error("postgresql", ["tls.minProtocolVersion=TLSv1.1"])
    assert "/tls/minProtocolVersion" in message


def test_every_value_is_read_by_a_template() -> None:
    assert unread_values("postgresql") == []


# --- scripts and lint -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script", ["initdb.sh", "init-data-directory.sh", "reloader.sh", "backup.sh"]
)
def test_scripts_answer_help(script: str) -> None:
    path = subchart_path("postgresql") / "files" / script
    assert os.access(path, os.X_OK)
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage:")


@pytest.mark.parametrize("settings", [(), EVERYTHING], ids=["default", "everything-on"])
def test_helm_lint_strict_is_clean(settings: tuple[str, ...]) -> None:
    cmd = [str(chart.HELM), "lint", "--strict", str(subchart_path("postgresql"))]
    for assignment in settings:
        cmd += ["--set", assignment]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def test_helm3_renders_the_same_objects_as_helm4() -> None:
    def inventory(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return sorted((o["kind"], o["metadata"]["name"]) for o in objects)

    four = render_subchart("postgresql", EVERYTHING)
    three = render_subchart("postgresql", EVERYTHING, helm=chart.HELM3)
    assert inventory(three) == inventory(four)
    assert config_files(three) == config_files(four)


# --- inside the umbrella chart -------------------------------------------------------------------


def test_umbrella_production_values_wire_certificates_bootstrap_and_backup() -> None:
    objects = chart.render(["values-postgresql.yaml"])
    spec = pod_spec(chart.find(objects, "StatefulSet", "nvsentinel-postgresql"))
    certificates = {c["spec"]["secretName"]: c for c in chart.of_kind(objects, "Certificate")}
    server_secret = volume(spec, "server-tls")["secret"]["secretName"]
    assert server_secret in certificates
    bootstrap = volume(spec, "bootstrap")["configMap"]["name"]
    assert "bootstrap.sql" in chart.find(objects, "ConfigMap", bootstrap)["data"]
    cron = chart.find(objects, "CronJob", "nvsentinel-postgresql-backup")
    backup_spec = pod_spec(cron)
    backup_secret = volume(backup_spec, "backup-tls")["secret"]["secretName"]
    assert (
        certificates[backup_secret]["spec"]["commonName"]
        == env(container(backup_spec, "backup"))["PGUSER"]
    )
    backup_host = env(container(backup_spec, "backup"))["PGHOST"]
    assert backup_host in certificates[server_secret]["spec"]["dnsNames"]
    assert "metrics" in {c["name"] for c in spec["containers"]}


def test_umbrella_tilt_values_give_the_password_to_port_forward_only() -> None:
    objects = chart.render(["values-tilt-postgresql.yaml"])
    files = chart.find(objects, "ConfigMap", "nvsentinel-postgresql-config")["data"]
    rules = parse_pg_hba(files["pg_hba.conf"])
    assert {r.address for r in rules if r.method == "scram-sha-256"} == {"127.0.0.1/32", "::1/128"}
    assert {r.type for r in rules} <= {"local", "hostssl"}
    secret = chart.find(objects, "Secret", "nvsentinel-postgresql")
    assert base64.b64decode(secret["data"]["password"]).decode() == "nvsentinel-dev"
    spec = pod_spec(chart.find(objects, "StatefulSet", "nvsentinel-postgresql"))
    assert spec["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}


def test_sessions_idle_in_a_transaction_are_ended_so_they_cannot_hold_change_streams_back() -> None:
    conf = parse_postgresql_conf(config_files(render())["postgresql.conf"])
    assert conf["idle_in_transaction_session_timeout"] == "5min"
    shorter = parse_postgresql_conf(
        config_files(render("config.idleInTransactionSessionTimeout=30s"))["postgresql.conf"]
    )
    assert shorter["idle_in_transaction_session_timeout"] == "30s"
    message = render_error("postgresql", ["config.idleInTransactionSessionTimeout=5 minutes"])
    assert "/config/idleInTransactionSessionTimeout" in message


def test_change_notifications_are_on_unless_an_operator_turns_them_off() -> None:
    conf = parse_postgresql_conf(config_files(render())["postgresql.conf"])
    assert conf["nvsentinel.notify_changes"] == "on"
    off = parse_postgresql_conf(
        config_files(render("config.notifyChanges=false"))["postgresql.conf"]
    )
    assert off["nvsentinel.notify_changes"] == "off"
    message = render_error("postgresql", ["config.parameters.nvsentinel\\.notify_changes=off"])
    assert "nvsentinel.notify_changes" in message
