"""The MongoDB subchart on its own and inside the umbrella chart: TLS required with
X.509 users, the replica set init Job that reruns only when its work changes, the
certificate rotator, the NetworkPolicy and a strict values schema."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.subcharts import (
    container,
    env,
    helm_template,
    mount_of,
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
MEMBER = "nvsentinel-mongodb-0.nvsentinel-mongodb-hl.nvsentinel.svc.cluster.local"
FILES = subchart_path("mongodb") / "files"


def render(*set_values: str) -> list[dict[str, Any]]:
    return render_subchart("mongodb", set_values, release="nvsentinel", namespace="nvsentinel")


def statefulset(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return chart.find(objects, "StatefulSet", "nvsentinel-mongodb")


def init_job(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [job] = chart.of_kind(objects, "Job")
    return job


def mongod_conf(objects: list[dict[str, Any]]) -> dict[str, Any]:
    text = chart.find(objects, "ConfigMap", "nvsentinel-mongodb-config")["data"]["mongod.conf"]
    parsed: dict[str, Any] = yaml.safe_load(text)
    return parsed


def test_names_follow_the_contract() -> None:
    objects = render()
    sts = statefulset(objects)
    assert sts["spec"]["serviceName"] == "nvsentinel-mongodb-hl"
    assert sts["spec"]["replicas"] == 1
    client = chart.find(objects, "Service", "nvsentinel-mongodb")
    headless = chart.find(objects, "Service", "nvsentinel-mongodb-hl")
    assert [p["port"] for p in client["spec"]["ports"]] == [27017]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    for service in (client, headless):
        assert selects(service["spec"]["selector"], pod_labels(sts))


def test_mongod_requires_tls_authorization_and_replica_set_rs0() -> None:
    objects = render()
    conf = mongod_conf(objects)
    assert conf["net"]["tls"]["mode"] == "requireTLS"
    assert conf["security"]["authorization"] == "enabled"
    assert conf["replication"]["replSetName"] == "rs0"
    assert "allowConnectionsWithoutCertificates" not in conf["net"]["tls"]
    assert "TLS1_0" in conf["net"]["tls"]["disabledProtocols"]


def test_mongod_serves_the_pem_built_from_the_server_secret_and_trusts_its_ca() -> None:
    objects = render()
    conf = mongod_conf(objects)["net"]["tls"]
    spec = pod_spec(statefulset(objects))
    mongod = container(spec, "mongod")
    builder = container(spec, "tls-pem")
    assert volume(spec, "server-tls")["secret"]["secretName"] == "nvsentinel-mongodb-server-tls"
    pem_dir = mount_of(mongod, "pem")["mountPath"]
    assert conf["certificateKeyFile"] == f"{pem_dir}/server.pem"
    assert conf["CAFile"] == f"{mount_of(mongod, 'server-tls')['mountPath']}/ca.crt"
    assert mount_of(builder, "pem")["mountPath"] == env(builder)["PEM_DIR"] == pem_dir
    assert mount_of(builder, "server-tls")["mountPath"] == env(builder)["TLS_DIR"]
    assert builder["command"][-1] == "--once"
    assert volume(spec, "pem")["emptyDir"]["medium"] == "Memory"


def test_rotator_rebuilds_the_served_pem_and_talks_to_mongod_over_loopback_tls() -> None:
    spec = pod_spec(statefulset(render()))
    rotator = container(spec, "tls-rotator")
    mongod = container(spec, "mongod")
    values = env(rotator)
    assert rotator["command"][-1] == "--watch"
    assert values["PEM_DIR"] == mount_of(mongod, "pem")["mountPath"]
    assert not mount_of(rotator, "pem").get("readOnly", False)
    assert mount_of(mongod, "pem")["readOnly"] is True
    assert values["TLS_DIR"] == mount_of(rotator, "server-tls")["mountPath"]
    assert values["NVS_HOST"] == "127.0.0.1:27017"
    assert values["NVS_TLS_PEM"] == f"{values['PEM_DIR']}/server.pem"
    auth_dir = mount_of(rotator, "auth")["mountPath"]
    assert values["NVS_ROOT_PASSWORD_FILE"] == f"{auth_dir}/root-password"


def test_probes_ping_over_tls_with_the_server_certificate() -> None:
    mongod = container(pod_spec(statefulset(render())), "mongod")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        script = mongod[probe]["exec"]["command"][-1]
        assert script.startswith("mongosh ") and "--tls " in script, probe
        assert "--tlsCertificateKeyFile /var/run/nvsentinel/mongodb-tls/server.pem" in script


def test_root_password_lives_in_a_secret_read_from_a_file() -> None:
    objects = render("auth.rootPassword=" + "p" * 32)
    secret = chart.find(objects, "Secret", "nvsentinel-mongodb")
    password = base64.b64decode(secret["data"]["root-password"]).decode()
    assert len(password) >= 32
    for config_map in chart.of_kind(objects, "ConfigMap"):
        assert all(password not in text for text in config_map["data"].values())
    values = env(container(pod_spec(statefulset(objects)), "mongod"))
    assert "MONGO_INITDB_ROOT_PASSWORD" not in values
    assert values["MONGO_INITDB_ROOT_PASSWORD_FILE"].endswith("/root-password")
    external = render("auth.existingSecret=ops-mongo")
    assert not chart.of_kind(external, "Secret")
    spec = pod_spec(statefulset(external))
    assert volume(spec, "auth")["secret"]["secretName"] == "ops-mongo"


def test_rendered_without_a_cluster_no_root_password_is_generated() -> None:
    """helm template (GitOps) cannot see an existing Secret: rather than a new random
    password on every render, which would no longer match the root user mongod
    created on its first start, no Secret is rendered and the pods reference
    `<release>-mongodb`, which the operator creates once (or auth.existingSecret)."""
    first, second = (helm_template("mongodb").stdout for _ in range(2))
    assert first == second, "two renders differ"
    documents = render()
    assert not chart.of_kind(documents, "Secret")
    for workload in (statefulset(documents), init_job(documents)):
        assert volume(pod_spec(workload), "auth")["secret"]["secretName"] == "nvsentinel-mongodb"
    readme = (subchart_path("mongodb") / "README.md").read_text()
    assert "kubectl create secret generic <release>-mongodb" in readme


def test_existing_secret_renders_no_secret_and_every_pod_reads_it() -> None:
    objects = render("auth.existingSecret=ops-mongo", "auth.rootPasswordKey=pw")
    assert not chart.of_kind(objects, "Secret")
    for workload in (statefulset(objects), init_job(objects)):
        spec = pod_spec(workload)
        assert volume(spec, "auth")["secret"]["secretName"] == "ops-mongo"
    values = env(container(pod_spec(statefulset(objects)), "mongod"))
    assert values["MONGO_INITDB_ROOT_PASSWORD_FILE"].endswith("/pw")


def test_development_root_password_is_the_same_on_every_render() -> None:
    renders = [helm_template("mongodb", ["auth.rootPassword=dev-root"]).stdout for _ in range(2)]
    assert renders[0] == renders[1]
    first = chart.find(render("auth.rootPassword=dev-root"), "Secret", "nvsentinel-mongodb")
    assert base64.b64decode(first["data"]["root-password"]).decode() == "dev-root"


def test_init_job_is_a_plain_object_not_a_helm_hook() -> None:
    job = init_job(render())
    annotations = job["metadata"].get("annotations", {})
    assert not [key for key in annotations if key.startswith("helm.sh/hook")]
    assert job["metadata"]["name"].startswith("nvsentinel-mongodb-init-")


def test_init_job_initiates_the_member_clients_discover_and_creates_the_x509_user() -> None:
    values = env(container(pod_spec(init_job(render())), "init"))
    assert values["NVS_REPLICA_SET"] == "rs0"
    assert values["NVS_MEMBER_HOST"] == f"{MEMBER}:27017"
    assert values["NVS_HOST"] == f"{MEMBER}:27017"
    assert json.loads(values["NVS_X509_USERS"]) == [
        {"subject": "CN=nvsentinel", "roles": [{"role": "readWrite", "db": "nvsentinel"}]}
    ]


def test_init_job_name_changes_when_its_work_changes_and_only_then() -> None:
    base = init_job(render())["metadata"]["name"]
    assert init_job(render("resources.requests.cpu=1"))["metadata"]["name"] == base
    assert init_job(render("initJob.backoffLimit=3"))["metadata"]["name"] == base
    users = "auth.x509Users[0].subject=CN=other,auth.x509Users[0].roles[0].role=read"
    changed_users = render(users, "auth.x509Users[0].roles[0].db=nvsentinel")
    assert init_job(changed_users)["metadata"]["name"] != base
    changed_domain = render("global.clusterDomain=example.org")
    assert init_job(changed_domain)["metadata"]["name"] != base
    member = env(container(pod_spec(init_job(changed_domain)), "init"))["NVS_MEMBER_HOST"]
    assert member.endswith(".svc.example.org:27017")


def test_network_policy_admits_only_datastore_clients_and_the_init_job() -> None:
    objects = render()
    policy = chart.find(objects, "NetworkPolicy", "nvsentinel-mongodb")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels(statefulset(objects)))
    [rule] = policy["ingress"]
    assert rule["ports"] == [{"port": 27017, "protocol": "TCP"}]
    peers = rule["from"]
    assert all(set(peer) == {"podSelector"} for peer in peers)
    assert peers[0]["podSelector"]["matchLabels"] == CLIENT_LABEL
    assert selects(peers[1]["podSelector"]["matchLabels"], pod_labels(init_job(objects)))


def test_network_policy_lets_mongod_egress_only_to_dns_and_replica_set_members() -> None:
    objects = render()
    policy = chart.find(objects, "NetworkPolicy", "nvsentinel-mongodb")["spec"]
    assert "Egress" in policy["policyTypes"]
    dns, members = policy["egress"]
    assert "to" not in dns
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert members["ports"] == [{"port": 27017, "protocol": "TCP"}]
    [peer] = members["to"]
    assert set(peer) == {"podSelector"}, "replica set members are pods of this namespace"
    mongod = pod_labels(statefulset(objects))
    assert selects(peer["podSelector"]["matchLabels"], mongod)
    # Not the init Job, not a datastore client: only mongod pods are peers.
    assert not selects(peer["podSelector"]["matchLabels"], pod_labels(init_job(objects)))
    assert not selects(peer["podSelector"]["matchLabels"], CLIENT_LABEL)
    narrowed = render(
        "networkPolicy.dnsPeers[0].podSelector.matchLabels.k8s-app=kube-dns",
    )
    dns = chart.find(narrowed, "NetworkPolicy", "nvsentinel-mongodb")["spec"]["egress"][0]
    assert dns["to"] == [{"podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]


def test_every_container_runs_as_mongodb_without_capabilities_or_a_writable_root() -> None:
    objects = render()
    for workload in (statefulset(objects), init_job(objects)):
        spec = pod_spec(workload)
        security = spec["securityContext"]
        assert security["runAsUser"] == security["fsGroup"] == 999
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        for item in [*spec.get("initContainers", []), *spec["containers"]]:
            assert item["securityContext"]["capabilities"]["drop"] == ["ALL"], item["name"]
            assert item["securityContext"]["readOnlyRootFilesystem"] is True, item["name"]


def test_disruption_budget_selects_the_mongod_pod() -> None:
    objects = render()
    budget = chart.find(objects, "PodDisruptionBudget", "nvsentinel-mongodb")
    assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels(statefulset(objects)))


def test_schema_rejects_an_unknown_key_and_names_it() -> None:
    assert "replicas" in render_error("mongodb", ["replicas=3"])


def test_schema_rejects_a_wrong_type_and_names_the_key() -> None:
    message = render_error("mongodb", ["tls.rotator.intervalSeconds=often"])
    assert "/tls/rotator/intervalSeconds" in message and "integer" in message


def test_schema_rejects_an_x509_user_without_roles() -> None:
    message = render_error("mongodb", ["auth.x509Users[0].subject=CN=x"])
    assert "/auth/x509Users/0" in message and "roles" in message


def test_every_value_is_read_by_a_template() -> None:
    assert unread_values("mongodb") == []


def test_roles_without_a_database_apply_to_auth_database() -> None:
    values = env(container(pod_spec(init_job(render("auth.database=events"))), "init"))
    [user] = json.loads(values["NVS_X509_USERS"])
    assert user["roles"] == [{"role": "readWrite", "db": "events"}]
    assert (
        init_job(render("auth.database=events"))["metadata"]["name"]
        != init_job(render())["metadata"]["name"]
    )


def test_tls_pem_script_answers_help() -> None:
    path = FILES / "tls-pem.sh"
    assert os.access(path, os.X_OK)
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("Usage:")


def test_tls_pem_once_writes_certificate_then_key_readable_only_by_its_owner(
    tmp_path: Path,
) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----")
    (tls / "tls.key").write_text("-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n")
    (tls / "ca.crt").write_text("CA\n")
    pem_dir = tmp_path / "pem"
    run_env = {**os.environ, "TLS_DIR": str(tls), "PEM_DIR": str(pem_dir)}
    result = subprocess.run(
        [str(FILES / "tls-pem.sh"), "--once"], env=run_env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    pem = (pem_dir / "server.pem").read_text()
    assert "-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----" in pem
    assert (pem_dir / "server.pem").stat().st_mode & 0o777 == 0o600
    assert not [p for p in pem_dir.iterdir() if p.name.startswith(".server.pem.")]


def test_helm_lint_strict_is_clean() -> None:
    cmd = [str(chart.HELM), "lint", "--strict", str(subchart_path("mongodb"))]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def test_helm3_renders_the_same_objects_as_helm4() -> None:
    def inventory(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return sorted((o["kind"], o["metadata"]["name"]) for o in objects)

    four = render_subchart("mongodb")
    three = render_subchart("mongodb", helm=chart.HELM3)
    assert inventory(three) == inventory(four)


def test_umbrella_certificates_match_the_member_host_and_the_x509_user() -> None:
    objects = chart.render()
    spec = pod_spec(statefulset(objects))
    certificates = {c["spec"]["secretName"]: c for c in chart.of_kind(objects, "Certificate")}
    server = certificates[volume(spec, "server-tls")["secret"]["secretName"]]["spec"]
    assert MEMBER in server["dnsNames"]
    assert "client auth" in server["usages"] and "server auth" in server["usages"]
    client = certificates["mongodb-client-cert"]["spec"]
    users = json.loads(env(container(pod_spec(init_job(objects)), "init"))["NVS_X509_USERS"])
    assert f"CN={client['commonName']}" in {u["subject"] for u in users}
