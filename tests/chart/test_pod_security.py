"""Every pod the chart can render passes the `restricted` Pod Security Standard.

The checks follow https://kubernetes.io/docs/concepts/security/pod-security-standards/
(the baseline controls plus the restricted ones, as of Kubernetes 1.29): no host
namespaces, paths or ports, no privileged containers, only the allowed volume
types, no added capability but NET_BIND_SERVICE and ALL dropped, no privilege
escalation, non-root, seccomp RuntimeDefault or Localhost, default /proc mount,
only safe sysctls, and SELinux options a restricted namespace accepts.

Pods checked: every workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
CronJob, Pod) of the chart rendered with its defaults, with each values file at
the repository root and with every scenario of tests/chart/scenarios.py, plus the
two subcharts on their own with every optional pod switched on.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart import scenarios
from tests.chart.subcharts import render_subchart

pytestmark = pytest.mark.chart

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
ALLOWED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
ALLOWED_CAPABILITIES = {"NET_BIND_SERVICE"}
ALLOWED_SECCOMP = {"RuntimeDefault", "Localhost"}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
ALLOWED_SELINUX_TYPES = {
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
}

#: Known violations of templates this helper does not own, as
#: (render, workload kind/name, container or "" for the pod, violation) -> why.
#: Each entry must match a violation that still exists (see
#: test_every_expected_violation_still_exists), so a fix removes it here too.
EXPECTED_VIOLATIONS: dict[tuple[str, str, str, str], str] = {}

SUBCHART_RENDERS = {
    "subchart-postgresql-everything": (
        "postgresql",
        (
            "metrics.enabled=true",
            "backup.enabled=true",
            "auth.passwordAuthentication.enabled=true",
            "auth.password=dev",
        ),
    ),
    "subchart-mongodb-defaults": ("mongodb", ()),
}


def renders() -> dict[str, list[dict[str, Any]]]:
    """Every rendering the checks cover, by name."""
    result: dict[str, list[dict[str, Any]]] = {}
    for scenario in scenarios.SCENARIOS:
        result[f"scenario-{scenario.name}"] = list(scenarios.rendered(scenario))
    result["defaults"] = list(scenarios.rendered(scenarios.Scenario("defaults", "mongodb")))
    for values_file in sorted(p.name for p in scenarios.REPO.glob("values-*.yaml")):
        result[f"file-{values_file}"] = list(
            scenarios.rendered(scenarios.Scenario(values_file, "", (values_file,)))
        )
    for name, (subchart, settings) in SUBCHART_RENDERS.items():
        result[name] = render_subchart(subchart, settings)
    return result


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = scenarios.pod_spec(workload)
    return spec


def violations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(container name or "" for the pod, what is wrong) for one pod spec."""
    found: list[tuple[str, str]] = []
    pod_security = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(("", f"{field} is true"))
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            found.append(("", f"volume {volume['name']} is of type {sorted(kinds)}"))
    if pod_security.get("runAsUser") == 0:
        found.append(("", "runAsUser is 0"))
    for sysctl in pod_security.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(("", f"sysctl {sysctl['name']} is not a safe sysctl"))
    found += [("", problem) for problem in selinux_problems(pod_security)]
    pod_seccomp = (pod_security.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ALLOWED_SECCOMP:
        found.append(("", f"seccompProfile {pod_seccomp}"))
    if (pod_security.get("windowsOptions") or {}).get("hostProcess"):
        found.append(("", "windowsOptions.hostProcess is true"))

    containers = [
        *spec.get("initContainers", []),
        *spec["containers"],
        *spec.get("ephemeralContainers", []),
    ]
    for item in containers:
        name = item["name"]
        security = item.get("securityContext") or {}
        if security.get("privileged"):
            found.append((name, "privileged"))
        if security.get("allowPrivilegeEscalation") is not False:
            found.append((name, "allowPrivilegeEscalation is not false"))
        capabilities = security.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            found.append((name, "capabilities do not drop ALL"))
        added = set(capabilities.get("add", [])) - ALLOWED_CAPABILITIES
        if added:
            found.append((name, f"capabilities add {sorted(added)}"))
        run_as_non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
        if run_as_non_root is not True:
            found.append((name, "runAsNonRoot is not true"))
        if security.get("runAsUser") == 0:
            found.append((name, "runAsUser is 0"))
        seccomp = (security.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ALLOWED_SECCOMP:
            found.append((name, f"seccompProfile is {seccomp}"))
        if security.get("procMount", "Default") != "Default":
            found.append((name, f"procMount {security['procMount']}"))
        found += [(name, problem) for problem in selinux_problems(security)]
        if (security.get("windowsOptions") or {}).get("hostProcess"):
            found.append((name, "windowsOptions.hostProcess is true"))
        for port in item.get("ports", []):
            if port.get("hostPort"):
                found.append((name, f"hostPort {port['hostPort']}"))
    return found


def selinux_problems(security: dict[str, Any]) -> list[str]:
    options = security.get("seLinuxOptions") or {}
    problems = []
    if options.get("type", "") not in ALLOWED_SELINUX_TYPES:
        problems.append(f"seLinuxOptions.type {options['type']}")
    for field in ("user", "role"):
        if options.get(field):
            problems.append(f"seLinuxOptions.{field} is set")
    return problems


def all_violations() -> dict[tuple[str, str, str, str], None]:
    found: dict[tuple[str, str, str, str], None] = {}
    for render_name, objects in renders().items():
        for obj in objects:
            if obj["kind"] not in WORKLOAD_KINDS:
                continue
            workload = f"{obj['kind']}/{obj['metadata']['name']}"
            for where, problem in violations(pod_spec(obj)):
                found[(render_name, workload, where, problem)] = None
    return found


def test_every_pod_of_every_rendering_passes_the_restricted_profile() -> None:
    unexpected = [v for v in all_violations() if v not in EXPECTED_VIOLATIONS]
    assert not unexpected, "\n".join(" | ".join(v) for v in unexpected)


def test_every_expected_violation_still_exists() -> None:
    found = all_violations()
    stale = [v for v in EXPECTED_VIOLATIONS if v not in found]
    assert not stale, f"fixed, remove from EXPECTED_VIOLATIONS: {stale}"


def test_the_checks_cover_pods_of_every_kind_the_chart_renders() -> None:
    """The renderings include the stores, the services, Jobs, CronJobs and the helm test
    Pod, so a pod kind missing from WORKLOAD_KINDS or a scenario cannot go unchecked."""
    kinds = {
        obj["kind"]
        for objects in renders().values()
        for obj in objects
        if obj["kind"] in WORKLOAD_KINDS
    }
    assert {"Deployment", "StatefulSet", "Job", "CronJob", "Pod"} <= kinds
    counted = sum(
        1 for objects in renders().values() for obj in objects if obj["kind"] in WORKLOAD_KINDS
    )
    assert counted > 50


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {
                "hostNetwork": True,
                "securityContext": {
                    "runAsNonRoot": True,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
                "containers": [
                    {
                        "name": "c",
                        "securityContext": {
                            "privileged": True,
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
                        },
                    }
                ],
            },
            {
                ("", "hostNetwork is true"),
                ("", "volume h is of type ['hostPath']"),
                ("c", "privileged"),
                ("c", "capabilities add ['NET_ADMIN']"),
            },
        ),
        (
            {"containers": [{"name": "c"}]},
            {
                ("c", "allowPrivilegeEscalation is not false"),
                ("c", "capabilities do not drop ALL"),
                ("c", "runAsNonRoot is not true"),
                ("c", "seccompProfile is None"),
            },
        ),
        (
            {
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "Localhost"}},
                "containers": [
                    {
                        "name": "c",
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                        },
                    }
                ],
            },
            set(),
        ),
    ],
    ids=["host-and-privileged", "nothing-set", "compliant"],
)
def test_the_checker_finds_what_the_profile_forbids(
    spec: dict[str, Any], expected: set[tuple[str, str]]
) -> None:
    assert set(violations(spec)) == expected
