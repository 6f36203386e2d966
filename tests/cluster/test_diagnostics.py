"""What a failing cluster test leaves behind: the node's own logs beside the namespace's.

hack/local-cluster.sh writes each component's log (kubelet, containerd,
kube-proxy, cert-manager, ...) into one folder; `collect_node_logs` copies the
end of each into the failure's diagnostics, so a crash at the end of a long
log is what lands, and a huge log does not fill the artifacts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.diagnostics import NODE_LOG_TAIL_BYTES, collect_node_logs

pytestmark = pytest.mark.cluster


def test_node_logs_are_copied_with_their_ends(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "kubelet.log").write_text("I1202 kubelet started\nE1202 pod sandbox failed\n")
    long_log = b"x" * (NODE_LOG_TAIL_BYTES + 1000) + b"\nE1202 containerd: last words\n"
    (logs / "containerd.log").write_bytes(long_log)
    (logs / "pids").mkdir()  # not a log

    folder = collect_node_logs(logs, tmp_path / "artifacts")

    assert folder == tmp_path / "artifacts" / "node-logs"
    assert sorted(p.name for p in folder.iterdir()) == ["containerd.log", "kubelet.log"]
    assert (folder / "kubelet.log").read_text().endswith("E1202 pod sandbox failed\n")
    copied = (folder / "containerd.log").read_bytes()
    assert len(copied) == NODE_LOG_TAIL_BYTES
    assert copied.endswith(b"E1202 containerd: last words\n")
