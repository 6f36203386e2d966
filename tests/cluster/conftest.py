"""Installs of the chart on the session's cluster, shared by the cluster tier's modules.

Each install gets its own namespace and is reused by every assertion of the
module that asks for it (module-scoped fixtures), so the tier installs each
values file once. Helm 4 applies with server-side apply, which refuses fields
the API server's schema (built-in or a CRD's) does not declare, so an accepted
install is a strictly validated one (`test_field_validation.py` proves that).
No `--wait`: Helm 4's default wait strategy is `hookOnly`, and the chart has no
install hooks, so an install returns once the objects are applied; pods never
run here (no kubelet).

A failing `helm` command fails the test with helm's own output and the
namespace's events (`install_failure_report`).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.resource import ResourceList

from tests.fixtures.cluster import Helm, HelmError
from tests.fixtures.diagnostics import namespace_events

# The shared assertions live in a helper module: let pytest explain their failures too.
pytest.register_assert_rewrite("tests.cluster.chart_objects")

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "nvsentinel"
RELEASE = "nvsentinel"
#: How long one helm command may take here (objects are only applied, never waited for).
HELM_TIMEOUT_S = 180


class HelmCommandFailed(AssertionError):
    """A helm command failed; the message has helm's output and the namespace's events."""


def install_failure_report(error: HelmError, core: client.CoreV1Api, namespace: str) -> str:
    """Helm's command and output, then the namespace's events, as one report."""
    return f"{error}\n--- events in namespace {namespace} ---\n{namespace_events(core, namespace)}"


@dataclass
class Release:
    """One helm release of the chart in its own namespace."""

    helm: Helm
    api: client.ApiClient
    namespace: str
    name: str = RELEASE
    history: list[str] = field(default_factory=list)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @property
    def networking(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self.api)

    def run(self, *args: str) -> str:
        """Run helm against this release's namespace; fail with a full report on error."""
        try:
            result = self.helm(*args, "--namespace", self.namespace, timeout=HELM_TIMEOUT_S)
        except HelmError as exc:
            raise HelmCommandFailed(
                install_failure_report(exc, self.core, self.namespace)
            ) from None
        self.history.append(" ".join(args))
        return result.stdout

    def install(self, values_files: Sequence[str] = (), *extra: str) -> str:
        return self.run("install", self.name, str(CHART), *_values_args(values_files), *extra)

    def upgrade(self, values_files: Sequence[str] = (), *extra: str) -> str:
        return self.run("upgrade", self.name, str(CHART), *_values_args(values_files), *extra)

    def uninstall(self) -> str:
        return self.run("uninstall", self.name)

    def custom_objects(self, group: str, version: str, plural: str) -> list[dict[str, Any]]:
        listing: dict[str, Any] = cast(
            dict[str, Any],
            client.CustomObjectsApi(self.api).list_namespaced_custom_object(
                group, version, self.namespace, plural
            ),
        )
        items: list[dict[str, Any]] = listing["items"]
        return items

    def certificates(self) -> dict[str, dict[str, Any]]:
        """The release namespace's cert-manager Certificates by name."""
        return {
            c["metadata"]["name"]: c
            for c in self.custom_objects("cert-manager.io", "v1", "certificates")
        }

    def issuers(self) -> dict[str, dict[str, Any]]:
        return {
            i["metadata"]["name"]: i
            for i in self.custom_objects("cert-manager.io", "v1", "issuers")
        }

    def configmap_data(self, name: str) -> dict[str, str]:
        return dict(self.core.read_namespaced_config_map(name, self.namespace).data or {})


def _values_args(values_files: Sequence[str]) -> list[str]:
    args: list[str] = []
    for values_file in values_files:
        args += ["--values", str(REPO / values_file)]
    return args


def namespace_name(label: str) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40].rstrip("-")
    return f"c-{stem}-{uuid.uuid4().hex[:6]}"


def create_namespace(core: client.CoreV1Api, name: str) -> None:
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"nvsentinel.test/owner": "pytest"})
        )
    )


def delete_namespace(core: client.CoreV1Api, name: str) -> None:
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="module")
def release_factory(helm: Helm, kube_api: client.ApiClient) -> Iterator[Callable[[str], Release]]:
    """Make releases, each in a new namespace deleted when the module ends."""
    core = client.CoreV1Api(kube_api)
    made: list[str] = []

    def make(label: str) -> Release:
        name = namespace_name(label)
        create_namespace(core, name)
        made.append(name)
        return Release(helm=helm, api=kube_api, namespace=name)

    yield make
    for name in made:
        delete_namespace(core, name)


def wait_until(
    check: Callable[[], Any], what: str, timeout: float = 60, interval: float = 0.5
) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def namespaced_resources(api: client.ApiClient) -> list[Any]:
    """Every listable namespaced resource type the API server serves (discovery)."""
    discovered = dynamic.DynamicClient(api)
    kinds = []
    for resource in discovered.resources.search():
        if isinstance(resource, ResourceList):
            continue
        verbs = getattr(resource, "verbs", None) or []
        if not getattr(resource, "namespaced", False) or "list" not in verbs:
            continue
        if "/" in resource.name:  # subresources
            continue
        kinds.append(resource)
    return kinds


def objects_in_namespace(api: client.ApiClient, namespace: str) -> set[str]:
    """`Kind/name` of every object in the namespace, across every listable type."""
    found: set[str] = set()
    seen_kinds: set[str] = set()
    for resource in namespaced_resources(api):
        # The same kind can be served by several groups/versions (events); list once.
        key = f"{resource.group}/{resource.kind}"
        if key in seen_kinds:
            continue
        seen_kinds.add(key)
        try:
            items = resource.get(namespace=namespace).items
        except ApiException:
            continue
        found.update(f"{resource.kind}/{item.metadata.name}" for item in items)
    return found
