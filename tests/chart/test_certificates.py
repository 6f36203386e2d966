"""cert-manager objects: what a client dials is in the server certificate, what it
authenticates as is its client certificate's CN, and the chain is complete."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.scenarios import BY_NAME, SCENARIOS, Scenario, rendered
from tests.fixtures import chart
from tests.fixtures.chart import SERVICES

pytestmark = pytest.mark.chart

IN_CLUSTER = [s for s in SCENARIOS if s.in_cluster]
CLIENT_CERT = [s for s in SCENARIOS if not s.password_auth]


def certificates(objects: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {c["spec"]["secretName"]: c for c in chart.of_kind(objects, "Certificate")}


def datastore_config(objects: tuple[dict[str, Any], ...]) -> dict[str, str]:
    return chart.find(objects, "ConfigMap", "nvsentinel-datastore-config")["data"]


@pytest.mark.parametrize("scenario", IN_CLUSTER, ids=lambda s: s.name)
def test_server_certificate_names_every_host_a_client_dials(scenario: Scenario) -> None:
    objects = rendered(scenario)
    store = f"nvsentinel-{scenario.provider}"
    server = certificates(objects)[f"{store}-server-tls"]["spec"]
    domain = "k8s.example" if "custom" in scenario.name else "cluster.local"
    expected = {datastore_config(objects)["DATASTORE_HOST"], "localhost"}
    for base in (store, f"{store}-hl", f"{store}-0.{store}-hl"):
        expected |= {
            base,
            f"{base}.nvsentinel",
            f"{base}.nvsentinel.svc",
            f"{base}.nvsentinel.svc.{domain}",
        }
    assert expected <= set(server["dnsNames"])
    assert {"127.0.0.1", "::1"} <= set(server["ipAddresses"])
    assert "server auth" in server["usages"]


@pytest.mark.parametrize("scenario", CLIENT_CERT, ids=lambda s: s.name)
def test_client_certificate_cn_is_the_configured_user(scenario: Scenario) -> None:
    objects = rendered(scenario)
    client = certificates(objects)[f"{scenario.provider}-client-cert"]["spec"]
    assert client["commonName"] == datastore_config(objects)["DATASTORE_USERNAME"]
    assert client["usages"] == ["digital signature", "key encipherment", "client auth"]


def test_client_certificate_follows_a_changed_username() -> None:
    objects = chart.render(
        ["values-postgresql.yaml"],
        ["global.datastore.connection.username=svc_user", "postgresql.auth.appUser=svc_user"],
    )
    client = certificates(tuple(objects))["postgresql-client-cert"]["spec"]
    assert client["commonName"] == "svc_user"
    assert datastore_config(tuple(objects))["DATASTORE_USERNAME"] == "svc_user"


def test_migration_certificate_cn_is_the_migration_role() -> None:
    objects = rendered(BY_NAME["postgresql-production"])
    migration = certificates(objects)["postgresql-migration-cert"]["spec"]
    assert migration["commonName"] == "nvsentinel_migrator"
    job = chart.of_kind(objects, "Job")[0]
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DATASTORE_USERNAME"] == migration["commonName"]


def test_backup_certificate_cn_is_the_subchart_backup_role() -> None:
    objects = rendered(BY_NAME["postgresql-production"])
    backup = certificates(objects)["nvsentinel-postgresql-backup-cert"]["spec"]
    assert backup["commonName"] == "nvsentinel_backup"


@pytest.mark.parametrize("scenario", CLIENT_CERT, ids=lambda s: s.name)
def test_every_leaf_chains_to_an_issuer_that_exists(scenario: Scenario) -> None:
    objects = rendered(scenario)
    issuers = {i["metadata"]["name"]: i["spec"] for i in chart.of_kind(objects, "Issuer")}
    certs = certificates(objects)
    custom = "certManager.issuerRef.name=corporate-pki" in scenario.set_values
    for secret, cert in certs.items():
        ref = cert["spec"]["issuerRef"]
        if custom:
            assert ref == {
                "name": "corporate-pki",
                "kind": "ClusterIssuer",
                "group": "cert-manager.io",
            }
            continue
        assert ref["kind"] == "Issuer" and ref["name"] in issuers, secret
        issuer = issuers[ref["name"]]
        if cert["spec"].get("isCA"):
            assert issuer == {"selfSigned": {}}
        else:
            ca_secret = issuer["ca"]["secretName"]
            assert certs[ca_secret]["spec"]["isCA"] is True
    if custom:
        assert issuers == {}, "the bootstrap chain must be skipped with certManager.issuerRef"


@pytest.mark.parametrize("scenario", CLIENT_CERT, ids=lambda s: s.name)
def test_leaf_certificates_renew_before_expiry_with_a_new_key(scenario: Scenario) -> None:
    for cert in certificates(rendered(scenario)).values():
        spec = cert["spec"]
        assert spec["privateKey"]["rotationPolicy"] == "Always"
        if not spec.get("isCA"):
            assert int(spec["renewBefore"].rstrip("h")) < int(spec["duration"].rstrip("h"))


def test_external_server_gets_client_certificates_but_no_server_certificate() -> None:
    objects = rendered(BY_NAME["postgresql-external-certificate"])
    assert set(certificates(objects)) == {
        "postgresql-client-cert",
        "postgresql-migration-cert",
        "nvsentinel-postgresql-pruner-cert",
        *(f"postgresql-client-cert-{name}" for name in SERVICES),
    }


def test_password_credentials_issue_no_certificate() -> None:
    objects = rendered(BY_NAME["postgresql-external-password"])
    assert chart.of_kind(objects, "Certificate") == []
    assert chart.of_kind(objects, "Issuer") == []


def test_mongodb_server_certificate_can_also_act_as_a_client() -> None:
    # The MongoDB subchart's init Job and probes present the server certificate as a client.
    server = certificates(rendered(BY_NAME["mongodb-defaults"]))["nvsentinel-mongodb-server-tls"]
    assert {"server auth", "client auth"} <= set(server["spec"]["usages"])


@pytest.mark.parametrize("scenario", CLIENT_CERT, ids=lambda s: s.name)
def test_certificate_secrets_carry_the_release_label_so_cleanup_can_select_them(
    scenario: Scenario,
) -> None:
    # README: `kubectl delete secret -l app.kubernetes.io/instance=<release>` after uninstall.
    for secret, cert in certificates(rendered(scenario)).items():
        labels = cert["spec"]["secretTemplate"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "nvsentinel", secret


def test_an_ip_address_the_clients_dial_goes_into_ip_addresses_not_dns_names() -> None:
    objects = chart.render(
        ["values-postgresql.yaml"], ["global.datastore.connection.host=10.1.2.3"]
    )
    server = certificates(tuple(objects))["nvsentinel-postgresql-server-tls"]["spec"]
    assert "10.1.2.3" in server["ipAddresses"]
    assert "10.1.2.3" not in server["dnsNames"]
