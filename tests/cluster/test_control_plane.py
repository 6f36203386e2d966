"""The API server the cluster tier runs against: version, health, controllers, CRDs, RBAC."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any, cast

import pykube
import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pytest_helm_charts.clusters import Cluster

from tests.fixtures.cluster import CONTROL_PLANE_SCRIPT, ControlPlane

pytestmark = pytest.mark.cluster

CERT_MANAGER_CRDS = (
    "certificates.cert-manager.io",
    "certificaterequests.cert-manager.io",
    "issuers.cert-manager.io",
    "clusterissuers.cert-manager.io",
    "orders.acme.cert-manager.io",
    "challenges.acme.cert-manager.io",
)
_NAMESPACE_GONE_TIMEOUT_S = 60
_DEFAULT_SA_TIMEOUT_S = 30


def _certificate(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture
def impersonated_api(
    kube_api: client.ApiClient, kubeconfig_path: Any, namespace: str
) -> Iterator[tuple[client.ApiClient, str]]:
    """A client acting as a new service account in ``namespace`` that has no bindings."""
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="unbound"))
    )
    api = config.new_client_from_config(config_file=str(kubeconfig_path))
    user = f"system:serviceaccount:{namespace}:unbound"
    api.set_default_header("Impersonate-User", user)
    try:
        yield api, user
    finally:
        api.close()


def test_version_endpoint_reports_kubernetes_1_34(kube_api: client.ApiClient) -> None:
    info = client.VersionApi(kube_api).get_code()
    assert (info.major, info.minor.rstrip("+")) == ("1", "34")
    assert info.git_version.startswith("v1.34."), info.git_version
    assert info.git_tree_state == "clean"


def test_readyz_answers_ok(kube_api: client.ApiClient) -> None:
    request = kube_api.param_serialize(
        method="GET", resource_path="/readyz", auth_settings=["BearerToken"]
    )
    response = kube_api.call_api(*request)
    response.read()
    assert (response.status, response.data) == (200, b"ok")


def test_namespace_can_be_created_and_is_finalized_on_delete(kube_api: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_api)
    name = f"t-lifecycle-{time.monotonic_ns() % 10**9}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    assert core.read_namespace(name).status.phase == "Active"

    core.delete_namespace(name)
    # The namespace controller (kube-controller-manager) empties and finalizes it.
    deadline = time.monotonic() + _NAMESPACE_GONE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            core.read_namespace(name)
        except ApiException as exc:
            assert exc.status == 404
            return
        time.sleep(0.5)
    pytest.fail(f"namespace {name} still exists {_NAMESPACE_GONE_TIMEOUT_S}s after deletion")


def test_new_namespace_gets_default_service_account(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    deadline = time.monotonic() + _DEFAULT_SA_TIMEOUT_S
    while time.monotonic() < deadline:
        names = [sa.metadata.name for sa in core.list_namespaced_service_account(namespace).items]
        if "default" in names:
            return
        time.sleep(0.2)
    pytest.fail(f"no default service account in {namespace} after {_DEFAULT_SA_TIMEOUT_S}s")


@pytest.mark.parametrize("crd", CERT_MANAGER_CRDS)
def test_cert_manager_crd_is_established(kube_api: client.ApiClient, crd: str) -> None:
    found = client.ApiextensionsV1Api(kube_api).read_custom_resource_definition(crd)
    conditions = {c.type: c.status for c in found.status.conditions or []}
    assert conditions.get("Established") == "True", conditions


def test_certificate_is_accepted_by_server_side_dry_run(
    kube_api: client.ApiClient, namespace: str
) -> None:
    certificate = _certificate(
        "store-server",
        secretName="store-server-tls",
        dnsNames=["store.example.svc"],
        issuerRef={"name": "store-ca", "kind": "Issuer"},
    )
    created: dict[str, Any] = cast(
        dict[str, Any],
        client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
            "cert-manager.io", "v1", namespace, "certificates", certificate, dry_run="All"
        ),
    )
    assert created["metadata"]["namespace"] == namespace
    assert created["spec"]["secretName"] == "store-server-tls"
    # A dry run stores nothing.
    listed: dict[str, Any] = cast(
        dict[str, Any],
        client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
            "cert-manager.io", "v1", namespace, "certificates"
        ),
    )
    assert listed["items"] == []


def test_certificate_without_secret_name_is_rejected_by_crd_schema(
    kube_api: client.ApiClient, namespace: str
) -> None:
    certificate = _certificate("no-secret", issuerRef={"name": "store-ca"})
    with pytest.raises(ApiException) as excinfo:
        client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
            "cert-manager.io", "v1", namespace, "certificates", certificate, dry_run="All"
        )
    assert excinfo.value.status == 422
    assert "secretName" in str(excinfo.value.body)


def test_service_account_without_bindings_is_forbidden(
    impersonated_api: tuple[client.ApiClient, str], namespace: str
) -> None:
    api, user = impersonated_api
    with pytest.raises(ApiException) as excinfo:
        client.CoreV1Api(api).list_namespaced_secret(namespace)
    assert excinfo.value.status == 403
    assert user in str(excinfo.value.body)


def test_service_account_with_role_binding_may_do_what_the_role_grants(
    kube_api: client.ApiClient, impersonated_api: tuple[client.ApiClient, str], namespace: str
) -> None:
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="read-secrets"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="unbound-reads-secrets"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="read-secrets"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="unbound", namespace=namespace)
            ],
        ),
    )
    api, _ = impersonated_api
    core = client.CoreV1Api(api)
    # RBAC's authorizer reads bindings from an informer: the grant lands shortly.
    deadline = time.monotonic() + 10
    while True:
        try:
            core.list_namespaced_secret(namespace)
            break
        except ApiException as exc:
            if exc.status != 403 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    # The role grants list on secrets only.
    with pytest.raises(ApiException) as excinfo:
        core.list_namespaced_config_map(namespace)
    assert excinfo.value.status == 403


def test_kube_cluster_fixture_reaches_the_same_api_server(
    kube_cluster: Cluster, namespace: str
) -> None:
    assert kube_cluster.kube_client is not None
    names = [ns.name for ns in pykube.Namespace.objects(kube_cluster.kube_client)]
    assert namespace in names


def test_second_up_reuses_the_running_control_plane(control_plane: ControlPlane | None) -> None:
    if control_plane is None:
        pytest.skip("the cluster was given by --kubeconfig/KUBECONFIG, not started here")
    pids = {p.name: p.read_text() for p in (control_plane.state_dir / "pids").iterdir()}
    again = control_plane.run("up", timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"export KUBECONFIG={control_plane.kubeconfig}\n"
    assert {p.name: p.read_text() for p in (control_plane.state_dir / "pids").iterdir()} == pids
    path = control_plane.run("kubeconfig", timeout=60)
    assert path.stdout.strip() == str(control_plane.kubeconfig)


def test_control_plane_help_says_pods_never_run() -> None:
    result = subprocess.run(
        [str(CONTROL_PLANE_SCRIPT), "--help"], capture_output=True, text=True, check=True
    )
    assert "no kubelet" in result.stdout
    assert "pods are never scheduled" in result.stdout


def test_service_range_is_unreachable_while_the_plane_runs(
    control_plane: ControlPlane | None,
) -> None:
    if control_plane is None:
        pytest.skip("the cluster was given by --kubeconfig/KUBECONFIG, not started here")
    if os.geteuid() != 0:
        pytest.skip("only root may add the route; the plane runs unguarded")
    routes = subprocess.run(
        ["ip", "route", "show", "10.0.0.0/24"], capture_output=True, text=True, check=True
    ).stdout
    assert routes.startswith("unreachable 10.0.0.0/24"), routes
