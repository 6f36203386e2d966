#!/usr/bin/env python3
"""Writes a one-layer OCI image archive (OCI layout in a tar) from a root
filesystem directory, named with one or more image references, for
`ctr images import`. Run with --help."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def build(args: argparse.Namespace) -> None:
    rootfs = Path(args.rootfs)
    if not rootfs.is_dir():
        sys.exit(f"oci-archive: {rootfs} is not a directory")
    with tempfile.TemporaryDirectory(dir=Path(args.out).parent) as tmp:
        layout = Path(tmp)
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer = layout / "layer.tar"
        # GNU tar is much faster than tarfile for large trees; sorted names and
        # a fixed mtime make the layer digest depend on the content only.
        subprocess.run(
            [
                "tar",
                "--create",
                "--file",
                str(layer),
                "--numeric-owner",
                "--sort=name",
                "--mtime=@0",
                "--xattrs",
                "--directory",
                str(rootfs),
                ".",
            ],
            check=True,
        )
        layer_digest = sha256_file(layer)
        layer_size = layer.stat().st_size
        layer.rename(blobs / layer_digest)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": args.env,
                "Entrypoint": json.loads(args.entrypoint) if args.entrypoint else None,
                "Cmd": json.loads(args.cmd) if args.cmd else None,
                "WorkingDir": args.workdir,
                "User": args.user,
            },
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        }
        config_digest, config_size = write_blob(blobs, json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": config_size},
            "layers": [
                {"mediaType": LAYER, "digest": f"sha256:{layer_digest}", "size": layer_size}
            ],
        }
        manifest_digest, manifest_size = write_blob(
            blobs, json.dumps(manifest, sort_keys=True).encode()
        )
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": MANIFEST,
                    "digest": manifest_digest,
                    "size": manifest_size,
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1],
                    },
                }
                for ref in args.ref
            ],
        }
        (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        partial = Path(args.out + ".partial")
        with tarfile.open(partial, "w") as archive:
            for name in ("oci-layout", "index.json", "blobs"):
                archive.add(layout / name, arcname=name)
        os.replace(partial, args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--rootfs", required=True, help="root filesystem directory (the single layer)"
    )
    parser.add_argument(
        "--ref", action="append", required=True, help="image reference (repeatable)"
    )
    parser.add_argument("--out", required=True, help="archive file to write")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE (repeatable)")
    parser.add_argument("--entrypoint", help="JSON list")
    parser.add_argument("--cmd", help="JSON list")
    parser.add_argument("--workdir", default="/")
    parser.add_argument("--user", default="")
    build(parser.parse_args())


if __name__ == "__main__":
    main()
