"""The cluster tier's installs are strictly validated, and a failing one explains itself.

Helm 4 applies objects with server-side apply, and the API server refuses an
apply that carries a field its schema does not declare, for built-in kinds and
for CRD-defined kinds (cert-manager's) alike. So an install that succeeds here
holds no misspelt or misplaced field; no separate `kubectl apply
--dry-run=server --validate=strict` pass is needed. These tests prove that on a
throwaway chart with one unknown field at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes import client

from tests.cluster.conftest import HelmCommandFailed, Release

pytestmark = pytest.mark.cluster

_TEMPLATE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: probe
data:
  key: value
{{- if eq .Values.unknownField "ConfigMap" }}
undeclaredTopLevel: true
{{- end }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: probe
spec:
  replicas: 0
  selector:
    matchLabels: {app: probe}
  template:
    metadata:
      labels: {app: probe}
    spec:
      containers:
        - name: probe
          image: busybox:1.37
          {{- if eq .Values.unknownField "Deployment" }}
          imagePullPolcy: Always
          {{- end }}
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata:
  name: probe
spec:
  selfSigned: {}
  {{- if eq .Values.unknownField "Issuer" }}
  selfSigend: {}
  {{- end }}
"""

UNKNOWN_FIELDS = {
    "ConfigMap": ".undeclaredTopLevel",
    "Deployment": '.spec.template.spec.containers[name="probe"].imagePullPolcy',
    "Issuer": ".spec.selfSigend",
}


@pytest.fixture(scope="module")
def probe_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chart = tmp_path_factory.mktemp("probe-chart")
    (chart / "templates").mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text('unknownField: ""\n')
    (chart / "templates" / "probe.yaml").write_text(_TEMPLATE)
    return chart


def test_probe_chart_installs_without_unknown_fields(
    release_factory: Callable[[str], Release], probe_chart: Path
) -> None:
    release = release_factory("probe-clean")
    release.run("install", "probe", str(probe_chart))
    issuer = release.issuers()["probe"]
    assert issuer["spec"] == {"selfSigned": {}}


@pytest.mark.parametrize("kind", sorted(UNKNOWN_FIELDS))
def test_helm_refuses_a_field_the_api_schema_does_not_declare(
    release_factory: Callable[[str], Release], probe_chart: Path, kind: str
) -> None:
    release = release_factory(f"probe-{kind}")
    with pytest.raises(HelmCommandFailed) as failure:
        release.run("install", "probe", str(probe_chart), "--set", f"unknownField={kind}")
    message = str(failure.value)
    assert "field not declared in schema" in message, message
    assert UNKNOWN_FIELDS[kind] in message, message


def test_failing_install_reports_helm_output_and_namespace_events(
    release_factory: Callable[[str], Release], probe_chart: Path
) -> None:
    release = release_factory("probe-report")
    marker = f"probe event {datetime.now(UTC).isoformat()}"
    release.core.create_namespaced_event(
        release.namespace,
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="probe-"),
            involved_object=client.V1ObjectReference(
                kind="ConfigMap",
                name="kube-root-ca.crt",
                namespace=release.namespace,
                api_version="v1",
            ),
            reason="Probe",
            message=marker,
            type="Normal",
            first_timestamp=datetime.now(UTC),
            last_timestamp=datetime.now(UTC),
            count=1,
        ),
    )
    with pytest.raises(HelmCommandFailed) as failure:
        release.run("install", "probe", str(probe_chart), "--set", "unknownField=Issuer")
    report = str(failure.value)
    assert "INSTALLATION FAILED" in report, report
    assert f"--- events in namespace {release.namespace} ---" in report, report
    assert marker in report, report
