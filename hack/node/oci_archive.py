"""Write a single-layer OCI image archive (for `ctr images import`) from files on disk.

Why not buildah: the pause image is one static binary, and the node must come up even where buildah is not
installed; an OCI layout is a few JSON files and a tar, so we write it directly and deterministically.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path


def blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def layer_from(files: list[tuple[Path, str]]) -> tuple[bytes, bytes]:
    """(gzipped layer, uncompressed tar) with each (source, path-in-image) as an executable owned by root."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for source, target in files:
            info = tarfile.TarInfo(target.lstrip("/"))
            data = source.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), uncompressed


def write_archive(output: Path, ref: str, files: list[tuple[Path, str]], entrypoint: list[str], user: str) -> None:
    layer_gz, layer_tar = layer_from(files)
    layer_digest, _ = blob(layer_gz)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "User": user},
            "rootfs": {"type": "layers", "diff_ids": [blob(layer_tar)[0]]},
        },
        sort_keys=True,
    ).encode()
    config_digest, _ = blob(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": len(layer_gz),
                }
            ],
        },
        sort_keys=True,
    ).encode()
    manifest_digest, _ = blob(manifest)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "annotations": {"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": ref},
                }
            ],
        }
    ).encode()
    with tarfile.open(output, "w") as archive:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            archive.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", index)
        for data in (layer_gz, config, manifest):
            add("blobs/sha256/" + blob(data)[0].removeprefix("sha256:"), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--ref", required=True, help="image name with tag, e.g. finetune.local/pause:3.10")
    parser.add_argument("--file", action="append", required=True, help="SOURCE:PATH_IN_IMAGE")
    parser.add_argument("--entrypoint", required=True)
    parser.add_argument("--user", default="65535:65535")
    args = parser.parse_args()
    files = [(Path(spec.split(":", 1)[0]), spec.split(":", 1)[1]) for spec in args.file]
    write_archive(args.output, args.ref, files, [args.entrypoint], args.user)


if __name__ == "__main__":
    main()
