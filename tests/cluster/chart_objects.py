"""What the chart promises to create, checked on the objects the API server stored.

Every helper reads through the API (typed clients, or the custom-objects API
for cert-manager kinds) and fails with what it found. They are shared by the
install, upgrade and uninstall tests, so "the PostgreSQL store is there" means
the same in each.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.cluster.conftest import REPO, Release, objects_in_namespace
from tests.fixtures.chart import SERVICES

PROVIDERS = ("postgresql", "mongodb")
PORTS = {"postgresql": 5432, "mongodb": 27017}
CLIENT_LABEL = "nvsentinel.nvidia.com/datastore-client"
MOUNT_PATH_VARS = {
    "postgresql": "POSTGRESQL_CLIENT_CERT_MOUNT_PATH",
    "mongodb": "MONGODB_CLIENT_CERT_MOUNT_PATH",
}
MIGRATIONS = REPO / "charts" / "nvsentinel" / "files" / "postgresql" / "migrations"


def datastore_config(release: Release) -> dict[str, str]:
    return release.configmap_data(f"{release.name}-datastore-config")


def _selects(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    return bool(selector) and all((labels or {}).get(k) == v for k, v in (selector or {}).items())


def assert_store_installed(release: Release, provider: str) -> dict[str, Any]:
    """StatefulSet, headless and client Services of the store; returns a summary for reuse."""
    store = f"{release.name}-{provider}"
    port = PORTS[provider]
    sts = release.apps.read_namespaced_stateful_set(store, release.namespace)
    assert sts.spec.service_name == f"{store}-hl", sts.spec.service_name
    template_labels = sts.spec.template.metadata.labels
    assert _selects(sts.spec.selector.match_labels, template_labels)
    ports = {p.container_port for c in sts.spec.template.spec.containers for p in c.ports or []}
    assert port in ports, f"{store} exposes {ports}, not {port}"
    secrets = {
        v.secret.secret_name for v in sts.spec.template.spec.volumes or [] if v.secret is not None
    }
    assert f"{store}-server-tls" in secrets, f"{store} mounts secrets {secrets}"

    client_svc = release.core.read_namespaced_service(store, release.namespace)
    assert client_svc.spec.type == "ClusterIP"
    assert client_svc.spec.cluster_ip not in (None, "None")
    assert [p.port for p in client_svc.spec.ports] == [port]
    assert _selects(client_svc.spec.selector, template_labels)

    headless = release.core.read_namespaced_service(f"{store}-hl", release.namespace)
    assert headless.spec.cluster_ip == "None"
    assert port in [p.port for p in headless.spec.ports]
    assert _selects(headless.spec.selector, template_labels)

    policy = release.networking.read_namespaced_network_policy(store, release.namespace)
    admitted = [
        peer.pod_selector.match_labels
        for rule in policy.spec.ingress or []
        for peer in rule._from or []
        if peer.pod_selector is not None and peer.pod_selector.match_labels
    ]
    assert {CLIENT_LABEL: "true"} in admitted or any(
        labels.get(CLIENT_LABEL) == "true" for labels in admitted
    ), f"NetworkPolicy {store} admits {admitted}"
    return {"statefulset": sts, "template_labels": template_labels}


def assert_certificates(release: Release, provider: str) -> None:
    """The bootstrap chain and the leaf certificates, as cert-manager's CRDs stored them."""
    store = f"{release.name}-{provider}"
    config = datastore_config(release)
    certificates = release.certificates()
    issuers = release.issuers()

    server = certificates.get(f"{store}-server-tls")
    assert server is not None, f"no server certificate; certificates: {sorted(certificates)}"
    assert server["spec"]["secretName"] == f"{store}-server-tls"
    names = set(server["spec"].get("dnsNames") or [])
    dialled = {
        config["DATASTORE_HOST"],
        f"{store}.{release.namespace}",
        f"{store}.{release.namespace}.svc",
        f"{store}.{release.namespace}.svc.cluster.local",
    }
    assert dialled <= names, f"server certificate lacks {dialled - names}"

    client_cert = certificates.get(f"{provider}-client-cert")
    assert client_cert is not None, f"no client certificate; certificates: {sorted(certificates)}"
    assert client_cert["spec"]["secretName"] == f"{provider}-client-cert"
    if provider == "postgresql":
        assert client_cert["spec"]["commonName"] == config["DATASTORE_USERNAME"]
        migration = certificates.get("postgresql-migration-cert")
        assert migration is not None, sorted(certificates)
        assert migration["spec"]["commonName"] == "nvsentinel_migrator"

    for cert in certificates.values():
        if (
            not cert["metadata"]["name"].startswith(store)
            and provider not in cert["metadata"]["name"]
        ):
            continue
        ref = cert["spec"]["issuerRef"]
        assert ref.get("kind", "Issuer") != "Issuer" or ref["name"] in issuers, (
            f"certificate {cert['metadata']['name']} names issuer {ref['name']}, "
            f"not one of {sorted(issuers)}"
        )
    ca_issuers = [i for i in issuers.values() if "ca" in i["spec"]]
    self_signed = [i for i in issuers.values() if "selfSigned" in i["spec"]]
    assert ca_issuers and self_signed, f"issuers: {sorted(issuers)}"
    ca_secrets = {c["spec"]["secretName"] for c in certificates.values() if c["spec"].get("isCA")}
    assert {i["spec"]["ca"]["secretName"] for i in ca_issuers} <= ca_secrets


def assert_schema_delivery(release: Release) -> None:
    """A schema Job mounting a ConfigMap that holds every migration, byte for byte."""
    jobs = [
        job
        for job in release.batch.list_namespaced_job(release.namespace).items
        if job.metadata.name.startswith(f"{release.name}-schema-")
    ]
    assert len(jobs) == 1, [job.metadata.name for job in jobs]
    job = jobs[0]
    assert job.metadata.annotations is None or "helm.sh/hook" not in job.metadata.annotations
    mounted = {
        v.config_map.name for v in job.spec.template.spec.volumes or [] if v.config_map is not None
    }
    schema_maps = [name for name in mounted if name.startswith(f"{release.name}-schema-")]
    assert len(schema_maps) == 1, mounted
    data = release.configmap_data(schema_maps[0])
    for migration in sorted(MIGRATIONS.glob("*.sql")):
        assert data.get(migration.name) == migration.read_text(), f"{migration.name} differs"
    secrets = {
        v.secret.secret_name for v in job.spec.template.spec.volumes or [] if v.secret is not None
    }
    assert "postgresql-migration-cert" in secrets, secrets


def assert_services_wired(release: Release, provider: str) -> None:
    """Every service Deployment reads the datastore ConfigMap and mounts the provider's cert."""
    config_name = f"{release.name}-datastore-config"
    config = datastore_config(release)
    assert config["DATASTORE_PROVIDER"] == provider
    assert config["DATASTORE_HOST"] == f"{release.name}-{provider}"
    assert config["DATASTORE_PORT"] == str(PORTS[provider])
    for key, value in config.items():
        assert "PASSWORD" not in key, f"{config_name} holds {key}"
        assert "PRIVATE KEY" not in value, f"{config_name}.{key} holds a private key"
    other = MOUNT_PATH_VARS["mongodb" if provider == "postgresql" else "postgresql"]
    for service in SERVICES:
        deployment = release.apps.read_namespaced_deployment(service, release.namespace)
        pod = deployment.spec.template
        assert pod.metadata.labels.get(CLIENT_LABEL) == "true", service
        init_names = [c.name for c in pod.spec.init_containers or []]
        assert "fix-cert-permissions" in init_names, f"{service} init containers: {init_names}"
        secrets = {v.secret.secret_name for v in pod.spec.volumes or [] if v.secret is not None}
        main = pod.spec.containers[0]
        sources = [e.config_map_ref.name for e in main.env_from or [] if e.config_map_ref]
        assert sources == [config_name], f"{service} envFrom {sources}"
        env = {e.name: e.value for e in main.env or []}
        if provider == "postgresql":
            # Each service its own login role and client certificate (CN = role).
            role = "nvsentinel_" + service.replace("-", "_")
            assert secrets == {f"postgresql-client-cert-{service}"}, f"{service} mounts {secrets}"
            assert env.get("DATASTORE_USERNAME") == role, f"{service} logs in as {env}"
        else:
            assert secrets == {"mongodb-client-cert"}, f"{service} mounts {secrets}"
        mount_path = env.get(MOUNT_PATH_VARS[provider])
        assert mount_path, f"{service} lacks {MOUNT_PATH_VARS[provider]}: {sorted(env)}"
        assert other not in env, f"{service} still sets {other}"
        mounts = {m.mount_path for m in main.volume_mounts or []}
        assert mount_path in mounts, f"{service} mounts {mounts}, not {mount_path}"
        for key in ("DATASTORE_SSLCERT", "DATASTORE_SSLKEY", "DATASTORE_SSLROOTCERT"):
            assert Path(config[key]).parent == Path(mount_path), (key, config[key], mount_path)


def store_leftovers(release: Release, provider: str) -> list[str]:
    """Objects of ``provider``'s store in the namespace, except PVCs and events."""
    return sorted(
        obj
        for obj in objects_in_namespace(release.api, release.namespace)
        if provider in obj.split("/", 1)[1]
        and not obj.startswith(("Event/", "PersistentVolumeClaim/"))
    )


def assert_store_absent(release: Release, provider: str, timeout: float = 60) -> None:
    """No object of ``provider``'s store is left, but for PersistentVolumeClaims.

    Pods and ControllerRevisions of a deleted StatefulSet are removed by the
    garbage collector shortly after, so this waits up to ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    leftovers = store_leftovers(release, provider)
    while leftovers and time.monotonic() < deadline:
        time.sleep(1)
        leftovers = store_leftovers(release, provider)
    assert leftovers == [], f"{provider} objects left after {timeout:.0f}s: {leftovers}"
