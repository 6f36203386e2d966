"""Every datastore client pod is wired the one way: ConfigMap, certificate directory,
permission fix, refresh, label; and no secret ever sits in a ConfigMap."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.chart.scenarios import (
    BY_NAME,
    CLIENT_LABEL,
    MOUNT_PATH,
    SCENARIOS,
    Scenario,
    datastore_clients,
    env_map,
    expected_client_identity,
    pod_labels,
    pod_spec,
    rendered,
)
from tests.fixtures import chart
from tests.fixtures.chart import SERVICES

pytestmark = pytest.mark.chart

CLIENT_CERT = [s for s in SCENARIOS if not s.password_auth]
SECRET_SOURCE = "/var/run/nvsentinel/datastore-client-cert-secret"


def init_container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    for container in pod_spec(obj).get("initContainers", []):
        if container["name"] == name:
            return container
    raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} has no init container {name}")


def connecting_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Containers that open datastore connections: the app containers and wait-for-postgresql."""
    spec = pod_spec(obj)
    waits = [c for c in spec.get("initContainers", []) if c["name"] == "wait-for-postgresql"]
    return [*spec["containers"], *waits]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_every_datastore_client_carries_the_label_and_reads_the_datastore_configmap(
    scenario: Scenario,
) -> None:
    clients = datastore_clients(rendered(scenario))
    # the services and the helm test pod; PostgreSQL adds the schema Job and the prune
    # CronJob; some scenarios turn on the store tools
    expected = len(SERVICES) + 1 + (2 if scenario.provider == "postgresql" else 0)
    expected += 1 if scenario.store_tools else 0
    assert len(clients) == expected
    for obj in clients:
        assert pod_labels(obj).get(CLIENT_LABEL) == "true", obj["metadata"]["name"]
        for container in connecting_containers(obj):
            assert {"configMapRef": {"name": "nvsentinel-datastore-config"}} in container[
                "envFrom"
            ], (obj["metadata"]["name"], container["name"])


@pytest.mark.parametrize("scenario", CLIENT_CERT, ids=lambda s: s.name)
def test_every_datastore_client_gets_its_certificate_through_fix_cert_permissions(
    scenario: Scenario,
) -> None:
    mount_env = f"{scenario.provider.upper()}_CLIENT_CERT_MOUNT_PATH"
    for obj in datastore_clients(rendered(scenario)):
        name = obj["metadata"]["name"]
        spec = pod_spec(obj)
        assert spec["initContainers"][0]["name"] == "fix-cert-permissions", name
        volumes = {v["name"]: v for v in spec["volumes"]}
        expected_secret, expected_user = expected_client_identity(obj, scenario.provider)
        assert volumes["datastore-client-cert-secret"]["secret"]["secretName"] == expected_secret
        assert volumes["datastore-client-cert"]["emptyDir"]["medium"] == "Memory"
        fix = init_container(obj, "fix-cert-permissions")
        mounts = {m["name"]: m for m in fix["volumeMounts"]}
        assert mounts["datastore-client-cert-secret"]["readOnly"] is True
        assert mounts["datastore-client-cert"]["mountPath"] == MOUNT_PATH
        assert env_map(fix)["SECRET_NAME"]["value"] == expected_secret
        for container in connecting_containers(obj):
            env = env_map(container)
            assert env[mount_env]["value"] == MOUNT_PATH, (name, container["name"])
            assert {
                "name": "datastore-client-cert",
                "mountPath": MOUNT_PATH,
                "readOnly": True,
            } in container["volumeMounts"], (name, container["name"])
            assert "DATASTORE_PASSWORD" not in env
            user = env.get("DATASTORE_USERNAME", {}).get("value")
            assert user == expected_user, (name, container["name"])


@pytest.mark.parametrize("scenario", CLIENT_CERT, ids=lambda s: s.name)
def test_long_running_services_refresh_renewed_certificates_and_short_lived_pods_do_not(
    scenario: Scenario,
) -> None:
    for obj in datastore_clients(rendered(scenario)):
        names = [c["name"] for c in pod_spec(obj)["initContainers"]]
        if obj["kind"] == "Deployment":
            refresher = init_container(obj, "client-cert-refresher")
            assert refresher["restartPolicy"] == "Always"  # a native sidecar
            assert names.index("client-cert-refresher") > names.index("fix-cert-permissions")
        else:
            assert "client-cert-refresher" not in names


def test_refresh_can_be_turned_off() -> None:
    objects = chart.render([], ["clientCertificate.refresh.enabled=false"])
    for obj in datastore_clients(tuple(objects)):
        assert [c["name"] for c in pod_spec(obj)["initContainers"]] == ["fix-cert-permissions"]


def test_password_auth_mounts_no_client_cert_and_reads_the_password_from_the_secret() -> None:
    objects = rendered(BY_NAME["postgresql-external-password"])
    config = chart.find(objects, "ConfigMap", "nvsentinel-datastore-config")["data"]
    assert "DATASTORE_SSLCERT" not in config and "DATASTORE_SSLKEY" not in config
    assert config["DATASTORE_SSLROOTCERT"] == f"{MOUNT_PATH}/ca.crt"
    assert config["DATASTORE_HOST"] == "pg.example.internal"
    for obj in datastore_clients(objects):
        name = obj["metadata"]["name"]
        spec = pod_spec(obj)
        assert not any(
            c["name"] in ("fix-cert-permissions", "client-cert-refresher")
            for c in spec.get("initContainers", [])
        ), name
        secrets = [v["secret"] for v in spec["volumes"] if "secret" in v]
        assert secrets == [
            {
                "secretName": "nvsentinel-db-ca",
                "defaultMode": 0o444,
                "items": [{"key": "ca.crt", "path": "ca.crt"}],
            }
        ], name
        # The schema Job, the prune CronJob and platform-connectors (the scenario gives it
        # its own role's password) log in as their own roles; the others share one login.
        expected, user = {
            "Job": ("nvsentinel-db-migrator", "nvsentinel_migrator"),
            "CronJob": ("nvsentinel-db-pruner", "nvsentinel_pruner"),
            "platform-connectors": (
                "nvsentinel-db-platform-connectors",
                "nvsentinel_platform_connectors",
            ),
        }.get(obj["kind"] if obj["kind"] != "Deployment" else name, ("nvsentinel-db", None))
        for container in connecting_containers(obj):
            password = env_map(container)["DATASTORE_PASSWORD"]
            assert password == {
                "name": "DATASTORE_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": expected, "key": "password"}},
            }, (name, container["name"])
            assert env_map(container).get("DATASTORE_USERNAME", {}).get("value") == user, name


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_no_secret_material_in_any_configmap(scenario: Scenario) -> None:
    for cm in chart.of_kind(rendered(scenario), "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            where = f"ConfigMap/{cm['metadata']['name']} key {key}"
            assert "PASSWORD" not in key.upper(), where
            assert "PRIVATE KEY" not in value, where
            assert "BEGIN CERTIFICATE" not in value, where
            assert "nvsentinel-dev" not in value, where


def test_development_password_lives_in_a_secret() -> None:
    objects = rendered(BY_NAME["postgresql-tilt"])
    secret = chart.find(objects, "Secret", "nvsentinel-postgresql")
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert password == "nvsentinel-dev"


@pytest.mark.parametrize(
    ("scenario", "host", "port"),
    [
        (BY_NAME["mongodb-defaults"], "nvsentinel-mongodb", "27017"),
        (BY_NAME["postgresql-production"], "nvsentinel-postgresql", "5432"),
        (BY_NAME["postgresql-external-certificate"], "pg.example.internal", "5432"),
    ],
    ids=lambda v: v.name if isinstance(v, Scenario) else str(v),
)
def test_connection_defaults_to_the_in_cluster_store_of_the_provider(
    scenario: Scenario, host: str, port: str
) -> None:
    config = chart.find(rendered(scenario), "ConfigMap", "nvsentinel-datastore-config")["data"]
    assert config == {
        "DATASTORE_PROVIDER": scenario.provider,
        "DATASTORE_HOST": host,
        "DATASTORE_PORT": port,
        "DATASTORE_DATABASE": "nvsentinel",
        "DATASTORE_USERNAME": "nvsentinel",
        "DATASTORE_SSLMODE": "verify-full",
        "DATASTORE_SSLCERT": f"{MOUNT_PATH}/tls.crt",
        "DATASTORE_SSLKEY": f"{MOUNT_PATH}/tls.key",
        "DATASTORE_SSLROOTCERT": f"{MOUNT_PATH}/ca.crt",
    }


def test_services_come_from_one_template_with_their_own_image_args_and_resources() -> None:
    objects = chart.render(
        [],
        [
            "services.node-drainer.enabled=false",
            "services.fault-quarantine.image.tag=9.9.9",
            "services.fault-quarantine.args={--dry-run,--log-level=debug}",
            "services.fault-quarantine.resources.limits.memory=1Gi",
            "services.fault-quarantine.replicas=2",
            "global.imageRegistry=mirror.internal:5000",
        ],
    )
    names = {d["metadata"]["name"] for d in chart.of_kind(objects, "Deployment")}
    assert names == set(SERVICES) - {"node-drainer"}
    fq = chart.find(objects, "Deployment", "fault-quarantine")
    container = fq["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "mirror.internal:5000/nvidia/nvsentinel/fault-quarantine:9.9.9"
    assert container["args"] == ["--dry-run", "--log-level=debug"]
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert fq["spec"]["replicas"] == 2
    other = chart.find(objects, "Deployment", "platform-connectors")
    assert other["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.1.0")


def test_services_roll_when_the_datastore_settings_change() -> None:
    def checksum(objects: list[dict[str, Any]]) -> str:
        dep = chart.find(objects, "Deployment", "fault-quarantine")
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/datastore-config"]

    before = checksum(chart.render())
    after = checksum(chart.render([], ["global.datastore.connection.sslmode=verify-ca"]))
    assert before != after


# -- the copy scripts, run for real ------------------------------------------------


def write_cert_dir(path: Path, generation: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (path / name).write_text(f"{name} generation {generation}\n")
        (path / name).chmod(0o440)


def run_env(container: dict[str, Any], source: Path, target: Path) -> dict[str, str]:
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CERT_SOURCE_DIR"] == SECRET_SOURCE and env["CERT_TARGET_DIR"] == MOUNT_PATH
    env.update(CERT_SOURCE_DIR=str(source), CERT_TARGET_DIR=str(target))
    return {"PATH": os.environ["PATH"], **env}


@pytest.mark.parametrize("provider", ["postgresql", "mongodb"])
def test_fix_cert_permissions_copies_key_0600_and_cert_and_ca_0644(
    provider: str, tmp_path: Path
) -> None:
    scenario = BY_NAME["postgresql-production" if provider == "postgresql" else "mongodb-defaults"]
    deployment = chart.find(rendered(scenario), "Deployment", "fault-quarantine")
    fix = init_container(deployment, "fix-cert-permissions")
    source, target = tmp_path / "secret", tmp_path / "tls"
    write_cert_dir(source, "1")
    target.mkdir()
    result = subprocess.run(
        [shutil.which("sh") or "/bin/sh", "-c", fix["args"][0]],
        env=run_env(fix, source, target),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in target.iterdir()}
    expected = {"tls.key": 0o600, "tls.crt": 0o644, "ca.crt": 0o644}
    if provider == "mongodb":
        expected["tls.pem"] = 0o600
        assert (target / "tls.pem").read_text() == "tls.crt generation 1\ntls.key generation 1\n"
    assert modes == expected
    assert (target / "tls.key").read_text() == "tls.key generation 1\n"
    assert (
        "fix-cert-permissions: copied mongodb-client-cert" in result.stdout
        or provider == "postgresql"
    )


def test_fix_cert_permissions_fails_loudly_when_the_secret_is_incomplete(tmp_path: Path) -> None:
    deployment = chart.find(
        rendered(BY_NAME["postgresql-production"]), "Deployment", "node-drainer"
    )
    fix = init_container(deployment, "fix-cert-permissions")
    source, target = tmp_path / "secret", tmp_path / "tls"
    write_cert_dir(source, "1")
    (source / "tls.key").unlink()
    target.mkdir()
    result = subprocess.run(
        ["/bin/sh", "-c", fix["args"][0]],
        env=run_env(fix, source, target),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "tls.key is missing or empty" in result.stderr
    assert "postgresql-client-cert-node-drainer" in result.stderr


def test_client_cert_refresher_copies_a_renewed_certificate_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    deployment = chart.find(
        rendered(BY_NAME["postgresql-production"]), "Deployment", "fault-quarantine"
    )
    fix = init_container(deployment, "fix-cert-permissions")
    refresher = init_container(deployment, "client-cert-refresher")
    source, target = tmp_path / "secret", tmp_path / "tls"
    write_cert_dir(source, "1")
    target.mkdir()
    subprocess.run(
        ["/bin/sh", "-c", fix["args"][0]],
        env=run_env(fix, source, target),
        check=True,
        capture_output=True,
    )
    env = run_env(refresher, source, target)
    env["INTERVAL_SECONDS"] = "0.2"
    proc = subprocess.Popen(
        ["/bin/sh", "-c", refresher["args"][0]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # cert-manager renews: the kubelet swaps the Secret's files.
        write_cert_dir(source, "2")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            key, crt = (target / "tls.key").read_text(), (target / "tls.crt").read_text()
            if key == "tls.key generation 2\n" and crt == "tls.crt generation 2\n":
                break
            time.sleep(0.05)
        assert (target / "tls.crt").read_text() == "tls.crt generation 2\n"
        assert (target / "ca.crt").read_text() == "ca.crt generation 2\n"
        assert stat.S_IMODE((target / "tls.key").stat().st_mode) == 0o600
        assert proc.poll() is None, "the refresher must keep running"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "client-cert-refresher: copied postgresql-client-cert-fault-quarantine" in out


def test_every_image_names_its_registry_and_a_mirror_replaces_it() -> None:
    def images(objects: list[dict[str, Any]]) -> set[str]:
        found = set()
        for obj in objects:
            pod = obj.get("spec", {}).get("template", {}).get("spec", {})
            if obj["kind"] == "CronJob":
                pod = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            if obj["kind"] == "Pod":
                pod = obj["spec"]
            for key in ("initContainers", "containers"):
                found |= {c["image"] for c in pod.get(key, [])}
        return found

    own = images(chart.render(["values-postgresql.yaml"]))
    assert "ghcr.io/nvidia/nvsentinel/fault-quarantine:0.1.0" in own
    assert any(i.startswith("quay.io/prometheuscommunity/postgres-exporter:") for i in own)
    assert all(i.split("/", 1)[0] in {"docker.io", "ghcr.io", "quay.io"} for i in own), own
    mirrored = images(
        chart.render(["values-postgresql.yaml"], ["global.imageRegistry=mirror.internal:5000"])
    )
    assert mirrored and all(i.startswith("mirror.internal:5000/") for i in mirrored), mirrored


# -- identities: one login, certificate and ServiceAccount per pod kind ------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_every_certificate_a_client_mounts_names_the_user_it_logs_in_as(
    scenario: Scenario,
) -> None:
    objects = rendered(scenario)
    if scenario.password_auth:
        assert not chart.of_kind(objects, "Certificate")
        return
    common_names = {
        c["spec"]["secretName"]: c["spec"]["commonName"]
        for c in chart.of_kind(objects, "Certificate")
    }
    config = chart.find(objects, "ConfigMap", "nvsentinel-datastore-config")["data"]
    for obj in datastore_clients(objects):
        secret, user = expected_client_identity(obj, scenario.provider)
        assert common_names[secret] == (user or config["DATASTORE_USERNAME"]), obj["metadata"]


@pytest.mark.parametrize(
    "scenario", [s for s in CLIENT_CERT if s.provider == "postgresql"], ids=lambda s: s.name
)
def test_each_service_logs_in_as_its_own_role_with_its_own_certificate(
    scenario: Scenario,
) -> None:
    objects = rendered(scenario)
    services = [o for o in datastore_clients(objects) if o["metadata"]["name"] in SERVICES]
    users = {env_map(pod_spec(o)["containers"][0])["DATASTORE_USERNAME"]["value"] for o in services}
    secrets = {
        v["secret"]["secretName"] for o in services for v in pod_spec(o)["volumes"] if "secret" in v
    }
    assert len(users) == len(secrets) == len(SERVICES)
    assert "nvsentinel" not in users
    # bootstrap.sql creates every one of them (the chart's initdb ConfigMap passes the list)
    if scenario.in_cluster:
        initdb = chart.find(objects, "ConfigMap", "nvsentinel-postgresql-initdb")["data"]
        listed = initdb["bootstrap.sql"].split("\\set service_users '", 1)[1].split("'", 1)[0]
        assert set(listed.split()) == users


def test_a_service_login_role_can_be_overridden_and_reaches_its_certificate() -> None:
    objects = chart.render(
        ["values-postgresql.yaml"], ["services.node-drainer.datastoreUser=drainer_role"]
    )
    dep = chart.find(objects, "Deployment", "node-drainer")
    env = env_map(pod_spec(dep)["containers"][0])
    assert env["DATASTORE_USERNAME"]["value"] == "drainer_role"
    cert = chart.find(objects, "Certificate", "postgresql-client-cert-node-drainer")
    assert cert["spec"]["commonName"] == "drainer_role"


@pytest.mark.parametrize(
    "scenario", [s for s in SCENARIOS if s.provider == "postgresql"], ids=lambda s: s.name
)
def test_only_the_prune_cronjob_mounts_the_pruner_certificate(scenario: Scenario) -> None:
    objects = rendered(scenario)
    pruner = "nvsentinel-postgresql-pruner-cert"
    mounting = []
    workloads = {"Deployment", "StatefulSet", "Job", "CronJob", "Pod"}
    for obj in (o for o in objects if o["kind"] in workloads):
        for volume in pod_spec(obj).get("volumes", []):
            projected = [
                s.get("secret", {}).get("name")
                for s in volume.get("projected", {}).get("sources", [])
            ]
            if pruner in (volume.get("secret", {}).get("secretName"), *projected):
                mounting.append(f"{obj['kind']}/{obj['metadata']['name']}")
    if scenario.password_auth:
        assert mounting == []
        return
    assert mounting == ["CronJob/nvsentinel-changelog-prune"]
    cert = chart.find(objects, "Certificate", pruner)
    assert cert["spec"]["commonName"] == "nvsentinel_pruner"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_each_datastore_client_runs_as_its_own_service_account_without_an_unneeded_token(
    scenario: Scenario,
) -> None:
    objects = rendered(scenario)
    accounts = {a["metadata"]["name"]: a for a in chart.of_kind(objects, "ServiceAccount")}
    used = []
    for obj in datastore_clients(objects):
        spec = pod_spec(obj)
        account = spec["serviceAccountName"]
        assert account in accounts, account
        assert accounts[account]["automountServiceAccountToken"] is False
        used.append(account)
        if obj["metadata"]["name"] not in SERVICES:
            assert spec["automountServiceAccountToken"] is False, obj["metadata"]["name"]
    assert len(used) == len(set(used))
    assert "default" not in used
    schema = [o for o in datastore_clients(objects) if o["kind"] == "Job"]
    for job in schema:
        assert pod_spec(job)["serviceAccountName"] == "nvsentinel-schema"
    analyzer = chart.find(objects, "Deployment", "health-events-analyzer")
    assert pod_spec(analyzer)["automountServiceAccountToken"] is False


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_the_charts_own_datastore_clients_egress_only_to_the_store_and_dns(
    scenario: Scenario,
) -> None:
    objects = rendered(scenario)
    policy = chart.find(objects, "NetworkPolicy", "nvsentinel-datastore-client-egress")["spec"]
    assert policy["policyTypes"] == ["Egress"]
    selector = policy["podSelector"]
    assert selector["matchLabels"][CLIENT_LABEL] == "true"
    selected = set(selector["matchExpressions"][0]["values"])
    for obj in datastore_clients(objects):
        name = pod_labels(obj)["app.kubernetes.io/name"]
        assert (name in selected) == (name not in SERVICES), name
    store, dns = policy["egress"]
    port = 5432 if scenario.provider == "postgresql" else 27017
    assert store["ports"] == [{"port": port, "protocol": "TCP"}]
    if scenario.in_cluster:
        assert store["to"] == [
            {
                "podSelector": {
                    "matchLabels": {
                        "app.kubernetes.io/name": scenario.provider,
                        "app.kubernetes.io/instance": "nvsentinel",
                    }
                }
            }
        ]
    else:
        assert "to" not in store
    assert dns == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}


def test_services_egress_can_be_restricted_with_extra_rules() -> None:
    objects = chart.render(
        ["values-postgresql.yaml"],
        [
            "networkPolicy.egress.services=true",
            "networkPolicy.egress.extraRules[0].ports[0].port=6443",
        ],
    )
    policy = chart.find(objects, "NetworkPolicy", "nvsentinel-datastore-client-egress")["spec"]
    assert set(SERVICES) <= set(policy["podSelector"]["matchExpressions"][0]["values"])
    assert policy["egress"][-1] == {"ports": [{"port": 6443}]}
