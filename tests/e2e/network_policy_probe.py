"""Probe pods for PostgreSQL's NetworkPolicy: does a pod with these labels reach port 5432?

The chart renders the NetworkPolicy `nvsentinel-postgresql` (ingress to port
5432 only from pods labelled `nvsentinel.nvidia.com/datastore-client: "true"`
and the subchart's own pods). A probe pod connects both through the Service
(routed through the node, kube-proxy's DNAT) and straight to the pod's address
(bridged between two pods). On kind the CNI enforces the policy; on the local
cluster (hack/local-cluster.sh) kube-router's network policy controller does.
"""

from __future__ import annotations

import time
import uuid

from kubernetes import client

from tests.e2e.conftest import Installed

#: busybox's nc; the local cluster's stand-in has it (docs/local-cluster.md).
PROBE_IMAGE = "busybox:1.36"
PORT = 5432
#: The label the chart's networkPolicy.clientPodLabels admits (its default).
DATASTORE_CLIENT_LABEL = ("nvsentinel.nvidia.com/datastore-client", "true")


def postgresql_pod_ip(installed: Installed) -> str:
    pod = client.CoreV1Api(installed.cluster.api).read_namespaced_pod(
        f"{installed.release}-postgresql-0", installed.namespace
    )
    assert pod.status.pod_ip, pod.status
    return str(pod.status.pod_ip)


def postgresql_targets(installed: Installed) -> list[str]:
    return [f"{installed.release}-postgresql", postgresql_pod_ip(installed)]


def probe(
    installed: Installed, targets: list[str], labels: dict[str, str], attempts: int
) -> dict[str, str]:
    """Run a pod with ``labels`` that connects to port 5432 of each target.

    busybox's nc has no -z: `nc -w 3 TARGET 5432 -e true` connects, runs `true`
    and exits 0, or fails (refused, timed out). Each target gets up to
    ``attempts`` tries a second apart (a new pod's address reaches the policy's
    allowed set shortly after the pod starts). Returns target -> "open", or
    "closed" and nc's last message.
    """
    name = f"netpol-probe-{uuid.uuid4().hex[:8]}"
    script = (
        f"for target in {' '.join(targets)}; do result=closed; i=0; "
        f"while [ $i -lt {attempts} ]; do "
        f'if out=$(nc -w 3 "$target" {PORT} -e true </dev/null 2>&1); then result=open; break; fi; '
        'result="closed $out"; i=$((i + 1)); sleep 1; done; '
        'echo "PROBE $target $result"; done'
    )
    args = ["run", name, "-n", installed.namespace, f"--image={PROBE_IMAGE}"]
    args += ["--image-pull-policy=IfNotPresent", "--restart=Never"]
    if labels:
        args.append("--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()))
    installed.cluster.kubectl(*args, "--command", "--", "sh", "-c", script)
    core = client.CoreV1Api(installed.cluster.api)
    try:
        deadline = time.monotonic() + 120
        phase = None
        while time.monotonic() < deadline:
            phase = core.read_namespaced_pod(name, installed.namespace).status.phase
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(1)
        logs = core.read_namespaced_pod_log(name, installed.namespace)
        assert phase == "Succeeded", f"probe pod {name} ended {phase}:\n{logs}"
    finally:
        core.delete_namespaced_pod(name, installed.namespace, grace_period_seconds=0)
    results: dict[str, str] = {}
    for line in logs.splitlines():
        word, _, rest = line.partition(" ")
        if word == "PROBE":
            target, _, result = rest.partition(" ")
            results[target] = result
    assert set(results) == set(targets), logs
    return results
