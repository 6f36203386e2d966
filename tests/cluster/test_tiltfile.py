"""The Tiltfile: which values files it loads, which resources it makes, in which order.

`tilt alpha tiltfile-result` evaluates the Tiltfile against the session's
cluster context and prints the resulting resources as JSON; `tilt ci` then
really applies the resources that need no running pod (cert-manager's CRD
check, the certificates, the plain objects) to the local control plane.

The Tiltfile only accepts kind contexts; these tests name the session's context
in NVSENTINEL_TILT_ALLOW_CONTEXT, the override it provides. Tilt renders the
chart with the `helm` on PATH, so `.bin` comes first on PATH here, as in `make
tilt-up`. The tilt binary is `.bin/tilt` (or the one NVSENTINEL_TILT names).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client, config

from tests.cluster.conftest import REPO, create_namespace, delete_namespace, namespace_name
from tests.fixtures.chart import SERVICES
from tests.fixtures.versions import pinned

pytestmark = pytest.mark.cluster

#: Resources each datastore gets besides the services: its StatefulSet, its setup Job.
DATASTORE_RESOURCES = {
    "mongodb": ("nvsentinel-mongodb", "nvsentinel-mongodb-init", 27017),
    "postgresql": ("nvsentinel-postgresql", "nvsentinel-schema", 5432),
}
#: Scheduled maintenance each datastore gets: PostgreSQL's changelog-prune CronJob.
MAINTENANCE_RESOURCES = {"mongodb": set(), "postgresql": {"nvsentinel-changelog-prune"}}
INFRASTRUCTURE = {"cert-manager", "certificates", "uncategorized"}


def _tilt_binary() -> Path:
    return Path(os.environ.get("NVSENTINEL_TILT", REPO / ".bin" / "tilt"))


@dataclass(frozen=True)
class TiltRun:
    """Runs tilt against the session's cluster with a private home directory."""

    binary: Path
    kubeconfig: Path
    context: str
    home: Path

    def env(self, extra: Mapping[str, str]) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("USE_POSTGRESQL", "NVSENTINEL_VALUES", "CERT_MANAGER_MANIFEST")
            and not k.startswith(("XDG_", "TILT_"))
        }
        env.update(
            PATH=f"{REPO / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            KUBECONFIG=str(self.kubeconfig),
            HOME=str(self.home),
            NVSENTINEL_TILT_ALLOW_CONTEXT=self.context,
        )
        env.update(extra)
        return env

    def __call__(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        assert self.binary.exists(), (
            f"{self.binary} not found: `make setup` builds tilt into .bin/ "
            "(or set NVSENTINEL_TILT to a tilt binary)"
        )
        return subprocess.run(
            [str(self.binary), *args],
            cwd=REPO,
            env=self.env(env or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def tilt(kubeconfig_path: Path, tmp_path_factory: pytest.TempPathFactory) -> TiltRun:
    _, current = config.list_kube_config_contexts(config_file=str(kubeconfig_path))
    return TiltRun(
        _tilt_binary(), kubeconfig_path, current["name"], tmp_path_factory.mktemp("tilt-home")
    )


@dataclass(frozen=True)
class TiltfileResult:
    """The parts of `tilt alpha tiltfile-result` the tests read."""

    raw: dict[str, Any]
    stderr: str

    @property
    def manifests(self) -> dict[str, dict[str, Any]]:
        return {m["Name"]: m for m in self.raw["Manifests"]}

    @property
    def config_files(self) -> list[str]:
        return [str(Path(p).relative_to(REPO)) for p in self.raw["ConfigFiles"]]

    def deps(self, name: str) -> set[str]:
        return set(self.manifests[name].get("ResourceDependencies") or [])

    def objects(self, name: str) -> list[dict[str, Any]]:
        text = self.manifests[name]["DeployTarget"].get("yaml", "")
        return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def tiltfile_result(tilt: TiltRun) -> Callable[..., TiltfileResult]:
    cache: dict[tuple[tuple[str, str], ...], TiltfileResult] = {}

    def evaluate(**env: str) -> TiltfileResult:
        key = tuple(sorted(env.items()))
        if key not in cache:
            result = tilt("alpha", "tiltfile-result", "-f", "Tiltfile", env=env)
            assert result.returncode == 0, (
                f"tilt alpha tiltfile-result exited {result.returncode}\n{result.stderr}"
            )
            cache[key] = TiltfileResult(json.loads(result.stdout), result.stderr)
        return cache[key]

    return evaluate


@pytest.mark.parametrize(
    ("env", "datastore"),
    [
        ({}, "mongodb"),
        ({"USE_POSTGRESQL": ""}, "mongodb"),
        ({"USE_POSTGRESQL": "0"}, "mongodb"),
        ({"USE_POSTGRESQL": "1"}, "postgresql"),
    ],
    ids=["unset", "empty", "zero", "one"],
)
def test_use_postgresql_selects_the_datastore_and_its_values_file(
    tiltfile_result: Callable[..., TiltfileResult], env: dict[str, str], datastore: str
) -> None:
    result = tiltfile_result(**env)
    values = [f for f in result.config_files if f.startswith("values")]
    assert values == [f"values-tilt-{datastore}.yaml"], result.config_files
    store, setup_job, _ = DATASTORE_RESOURCES[datastore]
    expected = INFRASTRUCTURE | set(SERVICES) | {store, setup_job}
    assert set(result.manifests) == expected | MAINTENANCE_RESOURCES[datastore]


@pytest.mark.parametrize("datastore", ["mongodb", "postgresql"])
def test_resources_start_in_dependency_order(
    tiltfile_result: Callable[..., TiltfileResult], datastore: str
) -> None:
    result = tiltfile_result(USE_POSTGRESQL="1" if datastore == "postgresql" else "0")
    store, setup_job, _ = DATASTORE_RESOURCES[datastore]
    assert result.deps("cert-manager") == set()
    assert result.deps("certificates") == {"cert-manager"}
    assert result.deps(store) == {"certificates"}
    assert result.deps(setup_job) == {store}
    for service in SERVICES:
        assert result.deps(service) == {store, setup_job}, service
    for cronjob in MAINTENANCE_RESOURCES[datastore]:
        assert result.deps(cronjob) == {store, setup_job}, cronjob


@pytest.mark.parametrize("datastore", ["mongodb", "postgresql"])
def test_certificates_resource_holds_every_issuer_and_certificate(
    tiltfile_result: Callable[..., TiltfileResult], datastore: str
) -> None:
    result = tiltfile_result(USE_POSTGRESQL="1" if datastore == "postgresql" else "0")
    grouped = {(o["kind"], o["metadata"]["name"]) for o in result.objects("certificates")}
    assert {kind for kind, _ in grouped} == {"Issuer", "Certificate"}
    assert ("Certificate", f"{datastore}-client-cert") in grouped
    assert ("Certificate", f"nvsentinel-{datastore}-server-tls") in grouped
    for name, manifest in result.manifests.items():
        if name == "certificates" or "yaml" not in manifest["DeployTarget"]:
            continue
        kinds = {o["kind"] for o in result.objects(name)}
        assert not kinds & {"Issuer", "Certificate"}, f"{name} also holds {kinds}"


@pytest.mark.parametrize("datastore", ["mongodb", "postgresql"])
def test_datastore_port_is_forwarded_for_local_tools(
    tiltfile_result: Callable[..., TiltfileResult], datastore: str
) -> None:
    result = tiltfile_result(USE_POSTGRESQL="1" if datastore == "postgresql" else "0")
    store, _, port = DATASTORE_RESOURCES[datastore]
    forwards = result.manifests[store]["DeployTarget"]["portForwardTemplateSpec"]["forwards"]
    assert [(f["localPort"], f["containerPort"]) for f in forwards] == [(port, port)]


def test_extra_values_file_is_applied_after_the_development_file(
    tiltfile_result: Callable[..., TiltfileResult], tmp_path_factory: pytest.TempPathFactory
) -> None:
    extra = tmp_path_factory.mktemp("values") / "my-values.yaml"
    extra.write_text(
        "postgresql:\n  persistence:\n    size: 3Gi\n"
        "services:\n  node-drainer:\n    enabled: false\n"
    )
    result = tiltfile_result(USE_POSTGRESQL="1", NVSENTINEL_VALUES=str(extra))
    assert "node-drainer" not in result.manifests
    statefulset = next(
        o for o in result.objects("nvsentinel-postgresql") if o["kind"] == "StatefulSet"
    )
    sizes = [
        t["spec"]["resources"]["requests"]["storage"]
        for t in statefulset["spec"]["volumeClaimTemplates"]
    ]
    assert sizes == ["3Gi"], sizes  # values-tilt-postgresql.yaml says 1Gi


def test_non_kind_context_is_refused(tilt: TiltRun) -> None:
    result = tilt(
        "alpha", "tiltfile-result", "-f", "Tiltfile", env={"NVSENTINEL_TILT_ALLOW_CONTEXT": ""}
    )
    if tilt.context.startswith("kind-"):
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 5, result.stderr
    assert "is not a kind cluster" in result.stderr, result.stderr


def test_tilt_ci_applies_the_resources_that_need_no_pod(
    tilt: TiltRun, kube_api: client.ApiClient
) -> None:
    """cert-manager's CRDs Established, then the certificates and plain objects applied.

    Workloads are left out: their pods would never run on this control plane.
    """
    namespace = namespace_name("tilt-ci")
    core = client.CoreV1Api(kube_api)
    create_namespace(core, namespace)
    try:
        result = tilt(
            "ci",
            "-f",
            "Tiltfile",
            "--port",
            "0",
            "--timeout",
            "120s",
            "--",
            "cert-manager",
            "certificates",
            "uncategorized",
            env={
                "USE_POSTGRESQL": "1",
                "CERT_MANAGER_MANIFEST": "skip",
                "NVSENTINEL_NAMESPACE": namespace,
            },
        )
        assert result.returncode == 0, (
            f"tilt ci exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
        assert "condition met" in result.stdout + result.stderr
        listing: dict[str, Any] = cast(
            dict[str, Any],
            client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
                "cert-manager.io", "v1", namespace, "certificates"
            ),
        )
        certificates = listing["items"]
        names = {c["metadata"]["name"] for c in certificates}
        assert {"postgresql-client-cert", "nvsentinel-postgresql-server-tls"} <= names, names
        datastore = core.read_namespaced_config_map("nvsentinel-datastore-config", namespace)
        assert datastore.data["DATASTORE_PROVIDER"] == "postgresql"
        workloads = client.AppsV1Api(kube_api).list_namespaced_stateful_set(namespace).items
        assert workloads == [], "tilt ci applied a workload it was not asked for"
    finally:
        delete_namespace(core, namespace)


@pytest.mark.parametrize(
    ("manifest", "applied"),
    [
        (
            None,
            "https://github.com/cert-manager/cert-manager/releases/download/"
            f"{pinned('CERT_MANAGER_VERSION')}/",
        ),
        ("/srv/mirror/cert-manager.yaml", "/srv/mirror/cert-manager.yaml"),
        ("skip", None),
    ],
    ids=["release", "local-file", "skip"],
)
def test_cert_manager_manifest_is_configurable_and_crds_are_awaited(
    tiltfile_result: Callable[..., TiltfileResult], manifest: str | None, applied: str | None
) -> None:
    env = {} if manifest is None else {"CERT_MANAGER_MANIFEST": manifest}
    result = tiltfile_result(**env)
    command = result.manifests["cert-manager"]["DeployTarget"]["UpdateCmdSpec"]["args"][-1]
    assert "wait --for=condition=Established" in command
    assert (
        "crd/certificates.cert-manager.io" in command and "crd/issuers.cert-manager.io" in command
    )
    if applied is None:
        assert " apply " not in command, command
    else:
        assert f"apply --server-side -f {applied}" in command, command
        assert command.index(" apply ") < command.index(" wait "), command
