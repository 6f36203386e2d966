"""The e2e tier: a kind cluster with cert-manager, the chart installed with each datastore in turn.

The whole tier skips, with the reason, when no container engine is usable
(`docker info` fails, so kind cannot create clusters) and no cluster is named
by ``E2E_KUBECONFIG``.

Environment:

- ``E2E_DATASTORE``: ``mongodb`` or ``postgresql`` runs that datastore's tests
  only (the CI matrix sets it); unset runs both, one after the other.
- ``E2E_KUBECONFIG``: use this cluster instead of creating a kind cluster.
- ``E2E_SKIP_REASON``: skip the tier with this reason (CI's main workflow, which
  leaves the tier to the e2e workflow although its runner has Docker).
- ``E2E_KIND_CLUSTER``: kind cluster name (default ``nvsentinel-e2e``).
- ``E2E_KEEP_CLUSTER=1``: leave the kind cluster running after the tests.
- ``KIND_NODE_IMAGE``: node image for kind (default: kind's own).
- ``CERT_MANAGER_VERSION`` (default: hack/versions.env's) or ``CERT_MANAGER_MANIFEST``
  (a URL or a file path) for the cert-manager static manifest.
- ``E2E_ARTIFACTS``: where failure diagnostics go (default ``e2e-artifacts/``).
- ``E2E_CERTIFICATES``: unset applies cert-manager's static manifest (above);
  ``installed``: cert-manager already runs in the cluster (hack/local-cluster.sh runs
  its controller on the host), so the tier only checks that the cert-manager.io
  CRDs are established.
- ``E2E_HELM_SET``: extra ``--set`` assignments for the install, comma-separated.
- ``E2E_NODE_LOGS``: a folder of the node's own logs (``*.log``: kubelet, containerd,
  ...), copied into the failure diagnostics (hack/run-tests.sh sets it for
  hack/local-cluster.sh; on kind, ``kind export logs`` does this).

A test module sets ``DATASTORE``, and may set ``VALUES`` (values files; default
``VALUES_FILES[DATASTORE]``) and ``HELM_SET`` (``--set`` assignments) for the
release the ``installed`` fixture makes for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.fixtures.chart import find, render
from tests.fixtures.cluster import Helm
from tests.fixtures.diagnostics import collect_namespace, collect_node_logs, kubectl
from tests.fixtures.rollout import wait_for_rollout
from tests.fixtures.versions import pinned

# Shared assertions live in helper modules: let pytest explain their failures too.
pytest.register_assert_rewrite(
    "tests.e2e.datastore_client",
    "tests.e2e.network_policy_probe",
    "tests.e2e.port_forward_relay",
    "tests.e2e.schema_checks",
    "tests.e2e.store_tools",
)

REPO = Path(__file__).resolve().parents[2]
KIND_CONFIG = REPO / "hack" / "kind-config.yaml"
STATE = REPO / ".state" / "e2e"
CHART = REPO / "charts" / "nvsentinel"
RELEASE = "nvsentinel"
NAMESPACE = "nvsentinel"
DATASTORES = ("mongodb", "postgresql")

#: cert-manager release whose static manifest the tier applies (override: CERT_MANAGER_VERSION).
CERT_MANAGER_VERSION = pinned("CERT_MANAGER_VERSION")
CERT_MANAGER_MANIFEST_URL = (
    "https://github.com/cert-manager/cert-manager/releases/download/{version}/cert-manager.yaml"
)
CERT_MANAGER_DEPLOYMENTS = ("cert-manager", "cert-manager-cainjector", "cert-manager-webhook")
#: The CRDs the chart's objects need, checked with ``E2E_CERTIFICATES=installed``.
CERT_MANAGER_CRDS = (
    "certificates.cert-manager.io",
    "certificaterequests.cert-manager.io",
    "issuers.cert-manager.io",
    "clusterissuers.cert-manager.io",
)

#: The one image this repository builds (hack/build-images.sh) and loads into kind: the
#: store tools' nvsentinel-store, which no registry publishes. The rest (postgres, mongo,
#: NVSentinel's services) the kind nodes pull themselves. hack/local-cluster.sh
#: imports its own builds.
PROJECT_IMAGE = "nvsentinel-store"
#: Turns on the store tools Deployment (the modules that use it set it in HELM_SET).
STORE_TOOLS = "storeTools.enabled=true"

#: The values file each datastore is installed with (the production overlay for
#: PostgreSQL; the chart's defaults select MongoDB).
VALUES_FILES: dict[str, tuple[str, ...]] = {
    "postgresql": ("values-postgresql.yaml",),
    "mongodb": (),
}


def _tool(name: str) -> str | None:
    built = REPO / ".bin" / name
    return str(built) if built.exists() else shutil.which(name)


def container_engine_problem() -> str | None:
    """Why the tier cannot run here, or None when it can."""
    if os.environ.get("E2E_SKIP_REASON"):
        return os.environ["E2E_SKIP_REASON"]
    if os.environ.get("E2E_KUBECONFIG"):
        return None
    if _tool("kind") is None:
        return "kind is not installed (.bin/kind or PATH); run `make setup`"
    provider = os.environ.get("KIND_EXPERIMENTAL_PROVIDER", "docker")
    engine = shutil.which(provider)
    if engine is None:
        return f"no container engine: `{provider}` is not on PATH, so kind cannot create clusters"
    try:
        result = subprocess.run(
            [engine, "info"], capture_output=True, text=True, check=False, timeout=30
        )
    except subprocess.TimeoutExpired:
        return f"no usable container engine: `{provider} info` did not answer in 30s"
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        last = detail[-1] if detail else f"exit code {result.returncode}"
        return (
            f"no usable container engine: `{provider} info` failed ({last}); "
            "kind cannot create clusters here (set E2E_KUBECONFIG to use another cluster)"
        )
    return None


def selected_datastores() -> tuple[str, ...]:
    wanted = os.environ.get("E2E_DATASTORE", "").strip()
    if not wanted:
        return DATASTORES
    if wanted not in DATASTORES:
        raise pytest.UsageError(f"E2E_DATASTORE={wanted!r}; expected one of {DATASTORES}")
    return (wanted,)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the other datastore's tests when E2E_DATASTORE names one."""
    here = Path(__file__).parent
    chosen = selected_datastores()
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        module = getattr(item, "module", None)
        datastore = getattr(module, "DATASTORE", None) if item.path.is_relative_to(here) else None
        (drop if datastore is not None and datastore not in chosen else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item so fixtures can see whether a test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session", autouse=True)
def _container_engine() -> None:
    problem = container_engine_problem()
    if problem is not None:
        pytest.skip(problem)


def run(cmd: list[str], *, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run a command; on failure raise with its full output (it lands in the report)."""
    result = subprocess.run(
        cmd, capture_output=True, text=True, check=False, timeout=timeout, env=env
    )
    if result.returncode != 0:
        raise AssertionError(
            f"`{' '.join(cmd)}` exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result.stdout


@dataclass(frozen=True)
class E2ECluster:
    """The cluster the tier runs on."""

    kubeconfig: Path
    api: client.ApiClient
    kind_name: str | None

    def kubectl(self, *args: str, timeout: float = 300) -> str:
        binary = kubectl()
        assert binary is not None, "kubectl not found (.bin/kubectl or PATH)"
        return run([binary, "--kubeconfig", str(self.kubeconfig), *args], timeout=timeout)

    def helm(self, *args: str, timeout: float = 600) -> str:
        """Run helm against this cluster (``tests.fixtures.cluster.Helm``, its own helm home)."""
        binary = _tool("helm")
        assert binary is not None, "helm not found (.bin/helm or PATH)"
        runner = Helm(Path(binary), self.kubeconfig, STATE / "helm-home")
        return runner(*args, timeout=timeout).stdout


def _create_kind_cluster(name: str, kubeconfig: Path) -> bool:
    """Create the kind cluster unless it exists; returns whether it was created here."""
    kind = _tool("kind")
    assert kind is not None
    existing = run([kind, "get", "clusters"]).split()
    if name in existing:
        run([kind, "export", "kubeconfig", "--name", name, "--kubeconfig", str(kubeconfig)])
        return False
    cmd = [kind, "create", "cluster", "--name", name, "--config", str(KIND_CONFIG)]
    cmd += ["--kubeconfig", str(kubeconfig), "--wait", "180s"]
    if os.environ.get("KIND_NODE_IMAGE"):
        cmd += ["--image", os.environ["KIND_NODE_IMAGE"]]
    run(cmd, timeout=900)
    return True


def store_tools_image() -> str:
    """The reference the chart gives the store tools image."""
    objects = render([], [STORE_TOOLS])
    (container,) = find(objects, "Deployment", f"{RELEASE}-store-tools")["spec"]["template"][
        "spec"
    ]["containers"]
    return str(container["image"])


def _load_project_image(kind_name: str) -> None:
    """Build the image this repository makes and load it into the kind nodes."""
    kind = _tool("kind")
    assert kind is not None
    STATE.mkdir(parents=True, exist_ok=True)
    refs = STATE / "image-refs"
    refs.write_text(f"{PROJECT_IMAGE} {store_tools_image()}\n")
    archive = run([str(REPO / "hack" / "build-images.sh"), "--refs-file", str(refs), PROJECT_IMAGE])
    run([kind, "load", "image-archive", archive.strip(), "--name", kind_name], timeout=900)


@pytest.fixture(scope="session")
def e2e_cluster() -> Iterator[E2ECluster]:
    """A kind cluster from hack/kind-config.yaml (or the one E2E_KUBECONFIG names)."""
    named = os.environ.get("E2E_KUBECONFIG")
    kind_name: str | None = None
    created = False
    if named:
        kubeconfig = Path(named)
    else:
        STATE.mkdir(parents=True, exist_ok=True)
        kubeconfig = STATE / "kubeconfig"
        kind_name = os.environ.get("E2E_KIND_CLUSTER", "nvsentinel-e2e")
        created = _create_kind_cluster(kind_name, kubeconfig)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    cluster = E2ECluster(kubeconfig, api, kind_name)
    # Only the PostgreSQL suite runs the store tools.
    if kind_name is not None and "postgresql" in selected_datastores():
        _load_project_image(kind_name)
    try:
        yield cluster
    finally:
        api.close()
        if created and os.environ.get("E2E_KEEP_CLUSTER") != "1":
            kind = _tool("kind")
            assert kind is not None
            run([kind, "delete", "cluster", "--name", str(kind_name)], timeout=300)


def cert_manager_manifest() -> str:
    explicit = os.environ.get("CERT_MANAGER_MANIFEST")
    if explicit:
        return explicit
    version = os.environ.get("CERT_MANAGER_VERSION", CERT_MANAGER_VERSION)
    return CERT_MANAGER_MANIFEST_URL.format(version=version)


_PROBE_ISSUER = """\
apiVersion: cert-manager.io/v1
kind: Issuer
metadata:
  name: e2e-webhook-probe
  namespace: cert-manager
spec:
  selfSigned: {}
"""


@pytest.fixture(scope="session")
def cert_manager(e2e_cluster: E2ECluster) -> str:
    """cert-manager installed from its static manifest, its webhook admitting objects.

    With ``E2E_CERTIFICATES=installed`` cert-manager already runs (hack/local-cluster.sh):
    only its CRDs are checked, and "installed" is returned.
    """
    mode = os.environ.get("E2E_CERTIFICATES", "")
    if mode not in ("", "installed"):
        raise pytest.UsageError(f"E2E_CERTIFICATES={mode!r}; expected unset or 'installed'")
    if mode == "installed":
        _check_cert_manager_crds(e2e_cluster)
        return "installed"
    return _install_cert_manager(e2e_cluster)


def _check_cert_manager_crds(e2e_cluster: E2ECluster) -> None:
    """Fail unless every CRD in CERT_MANAGER_CRDS exists and is Established."""
    extensions = client.ApiextensionsV1Api(e2e_cluster.api)
    problems: list[str] = []
    for name in CERT_MANAGER_CRDS:
        try:
            crd = extensions.read_custom_resource_definition(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            problems.append(f"{name} is missing")
            continue
        conditions = (crd.status.conditions or []) if crd.status else []
        if not any(c.type == "Established" and c.status == "True" for c in conditions):
            problems.append(f"{name} is not Established")
    assert not problems, (
        "E2E_CERTIFICATES=installed, but cert-manager's CRDs are not in place: "
        + "; ".join(problems)
    )


def _install_cert_manager(e2e_cluster: E2ECluster) -> str:
    manifest = cert_manager_manifest()
    e2e_cluster.kubectl("apply", "--server-side", "-f", manifest)
    for name in CERT_MANAGER_DEPLOYMENTS:
        wait_for_rollout(e2e_cluster.api, "Deployment", name, "cert-manager", timeout=300)
    probe = STATE / "cert-manager-probe.yaml"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(_PROBE_ISSUER)
    deadline = time.monotonic() + 120
    while True:
        try:
            e2e_cluster.kubectl("create", "--dry-run=server", "-f", str(probe))
            return manifest
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(3)


def _delete_namespace(e2e_cluster: E2ECluster, namespace: str, timeout: float = 300) -> None:
    core = client.CoreV1Api(e2e_cluster.api)
    try:
        core.delete_namespace(namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(2)
    raise AssertionError(f"namespace {namespace} still terminating after {timeout:.0f}s")


def artifacts_root() -> Path:
    return Path(os.environ.get("E2E_ARTIFACTS", REPO / "e2e-artifacts"))


@dataclass(frozen=True)
class Installed:
    """The chart installed with one datastore and rolled out."""

    cluster: E2ECluster
    datastore: str
    #: The values files and --set assignments of the install (an upgrade keeps them).
    values: tuple[str, ...] = ()
    set_values: tuple[str, ...] = ()
    release: str = RELEASE
    namespace: str = NAMESPACE

    def helm_values_args(self) -> list[str]:
        args: list[str] = []
        for values in self.values:
            args += ["--values", str(REPO / values)]
        for assignment in self.set_values:
            args += ["--set", assignment]
        return args

    def upgrade(self, chart: Path) -> None:
        """`helm upgrade` the release to ``chart`` (a changed copy) with the same values."""
        self.cluster.helm(
            "upgrade",
            self.release,
            str(chart),
            "--namespace",
            self.namespace,
            *self.helm_values_args(),
        )


def install_release(
    cluster: E2ECluster, datastore: str, values: tuple[str, ...], set_values: tuple[str, ...]
) -> Installed:
    """`helm install` the chart for ``datastore`` and wait until its workloads are rolled out.

    E2E_HELM_SET adds --set assignments (a cluster lacking an image) after ``set_values``.
    """
    extra = tuple(filter(None, os.environ.get("E2E_HELM_SET", "").split(",")))
    release = Installed(cluster, datastore, values, (*set_values, *extra))
    cluster.helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        *release.helm_values_args(),
    )
    wait_for_rollout(cluster.api, "StatefulSet", f"{RELEASE}-{datastore}", NAMESPACE, timeout=600)
    for job in client.BatchV1Api(cluster.api).list_namespaced_job(NAMESPACE).items:
        wait_for_rollout(cluster.api, "Job", job.metadata.name, NAMESPACE, timeout=600)
    if STORE_TOOLS in release.set_values:
        wait_for_rollout(
            cluster.api, "Deployment", f"{RELEASE}-store-tools", NAMESPACE, timeout=300
        )
    return release


def collect_diagnostics(cluster: E2ECluster, namespace: str, dest: Path) -> None:
    """The namespace's events, describe output and pod logs, and the node's own logs."""
    collect_namespace(cluster.api, cluster.kubeconfig, namespace, dest)
    node_logs = os.environ.get("E2E_NODE_LOGS")
    if node_logs:
        collect_node_logs(Path(node_logs), dest)
    elif cluster.kind_name is not None:
        kind = _tool("kind")
        assert kind is not None
        subprocess.run(
            [kind, "export", "logs", str(dest / "node-logs"), "--name", cluster.kind_name],
            capture_output=True,
            check=False,
            timeout=300,
        )


@pytest.fixture(scope="module")
def installed(
    request: pytest.FixtureRequest, e2e_cluster: E2ECluster, cert_manager: str
) -> Iterator[Installed]:
    """The chart installed for the requesting module (DATASTORE, VALUES, HELM_SET),
    removed afterwards.

    When the install fails, the diagnostics (events, describe output, pod and node
    logs) are written to e2e-artifacts/<module>-install/ before the error is raised.
    """
    module = request.module
    datastore = module.DATASTORE
    values = tuple(getattr(module, "VALUES", VALUES_FILES[datastore]))
    set_values = tuple(getattr(module, "HELM_SET", ()))
    _delete_namespace(e2e_cluster, NAMESPACE)
    try:
        release = install_release(e2e_cluster, datastore, values, set_values)
    except BaseException:
        name = module.__name__.rsplit(".", 1)[-1]
        collect_diagnostics(e2e_cluster, NAMESPACE, artifacts_root() / f"{name}-install")
        raise
    yield release
    e2e_cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE)
    _delete_namespace(e2e_cluster, NAMESPACE)


@pytest.fixture(autouse=True)
def _collect_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failing test, write the namespace's diagnostics to e2e-artifacts/<test>/."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.failed:
        return
    if "installed" not in request.fixturenames:
        return
    release: Installed = request.getfixturevalue("installed")
    collect_diagnostics(release.cluster, release.namespace, artifacts_root() / request.node.name)
