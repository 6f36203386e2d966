"""Each pinned version is written once: hack/versions.env, or a wrapper module's go.mod.

The scripts (hack/lib/versions.sh), the Tiltfile and the tests read
hack/versions.env; nothing else may repeat a version it pins, and the docs,
which may name versions, must name the pinned ones.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.versions import (
    REPO,
    VERSIONS_FILE,
    WRAPPER_MODULES,
    parse_versions,
    pinned,
    pinned_versions,
    wrapper_version,
)

pytestmark = pytest.mark.cluster

#: Files that may name a pinned version: the pins themselves and prose.
_MAY_NAME_VERSIONS = re.compile(r"(^|/)(go\.mod|go\.sum)$|\.md$")
_DOCS = ("README.md", "docs/*.md", "charts/nvsentinel/README.md")


def _repository_files() -> list[Path]:
    """Tracked and new (not ignored) files of the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [REPO / name for name in sorted(set(listed.split("\0"))) if name]


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return ""


def test_versions_file_reads_the_same_in_shell_as_in_python() -> None:
    versions = pinned_versions()
    assert {"CERT_MANAGER_VERSION", "HELM_VERSION", "SHFMT_VERSION"} <= set(versions)
    script = 'set -euo pipefail; source "$1"; shift; for k in "$@"; do echo "$k=${!k}"; done'
    shell = subprocess.run(
        ["bash", "-c", script, "bash", str(VERSIONS_FILE), *versions],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout
    assert parse_versions(shell, "bash") == versions


def test_versions_file_refuses_lines_the_shell_would_read_otherwise() -> None:
    for line in ('HELM_VERSION="v4"', "HELM_VERSION=$OTHER", "export HELM_VERSION=v4", "v4"):
        with pytest.raises(ValueError, match="not a plain KEY=value line"):
            parse_versions(f"# pins\n{line}\n", "test")


def test_no_script_tiltfile_or_test_repeats_a_pinned_version() -> None:
    pins = {**pinned_versions(), **{f"hack/tools/{d}": wrapper_version(d) for d in WRAPPER_MODULES}}
    repeated = []
    for path in _repository_files():
        relative = path.relative_to(REPO).as_posix()
        if path == VERSIONS_FILE or _MAY_NAME_VERSIONS.search(relative):
            continue
        text = _text(path)
        repeated += [f"{relative}: {key} {v}" for key, v in pins.items() if v in text]
    assert not repeated, "read the version from hack/versions.env instead:\n" + "\n".join(repeated)


def _bare(version: str) -> str:
    return version.removeprefix("v")


def test_docs_name_the_pinned_versions() -> None:
    # A tool's name followed by a version, as the docs write it.
    mentions = {
        r"cert-manager(?:-controller)?`? \(?v?(\d+\.\d+\.\d+)": {
            pinned("CERT_MANAGER_VERSION"),
            wrapper_version("cert-manager"),
        },
        r"CoreDNS v?(\d+\.\d+\.\d+)": {pinned("COREDNS_VERSION")},
        r"kube-router:? v?(\d+\.\d+\.\d+)": {pinned("KUBE_ROUTER_VERSION")},
        r"shfmt v?(\d+\.\d+\.\d+)": {pinned("SHFMT_VERSION")},
        r"Kubernetes v?(\d+\.\d+\.\d+)": {wrapper_version("kubernetes")},
    }
    wrong = []
    for path in sorted({p for pattern in _DOCS for p in REPO.glob(pattern)}):
        text = path.read_text()
        for pattern, versions in mentions.items():
            allowed = {_bare(v) for v in versions}
            wrong += [
                f"{path.relative_to(REPO)}: {found[0]!r}, pinned: {' or '.join(sorted(versions))}"
                for found in re.finditer(pattern, text)
                if found[1] not in allowed
            ]
    assert not wrong, "\n".join(wrong)
