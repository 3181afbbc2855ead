"""A second, different image made from an OCI archive: the same layers, one label more, another name.

Why: an upgrade test needs an operator image that is not the running one (another image ID, so the Deployment
rolls and the pods that come up are provably the new ones), and rebuilding the image for it would cost minutes.
Changing the image config (a label) gives a new config digest and so a new manifest digest, while every layer
blob stays byte-identical: containerd stores and unpacks nothing new. Pure file work on the archive
(hack/build-images.sh writes it: `index.json`, `oci-layout`, `blobs/sha256/*`), no buildah, no daemon.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def relabel_archive(source: Path, target: Path, ref: str, labels: dict[str, str]) -> str:
    """Write `target`: the single-image OCI archive `source` with `labels` added to its config and named `ref`.
    Returns the new manifest's digest."""
    with tarfile.open(source) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}

        def read(name: str) -> bytes:
            handle = tar.extractfile(members[name])
            if handle is None:
                raise ValueError(f"{source}: {name} is not a file")
            return handle.read()

        index = json.loads(read("index.json"))
        if len(index["manifests"]) != 1:
            raise ValueError(f"{source}: index.json lists {len(index['manifests'])} manifests, expected one image")
        manifest = json.loads(read("blobs/sha256/" + index["manifests"][0]["digest"].split(":", 1)[1]))
        config = json.loads(read("blobs/sha256/" + manifest["config"]["digest"].split(":", 1)[1]))
        config.setdefault("config", {})
        config["config"]["Labels"] = {**(config["config"].get("Labels") or {}), **labels}
        config_digest, config_bytes = _blob(json.dumps(config, separators=(",", ":")).encode())
        manifest["config"] = {**manifest["config"], "digest": config_digest, "size": len(config_bytes)}
        manifest_digest, manifest_bytes = _blob(json.dumps(manifest, separators=(",", ":")).encode())
        entry = {
            **index["manifests"][0],
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "annotations": {"org.opencontainers.image.ref.name": ref},
        }
        new_index = json.dumps({**index, "manifests": [entry]}, separators=(",", ":")).encode()

        with tarfile.open(target, "w") as out:

            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                out.addfile(info, io.BytesIO(data))

            add("oci-layout", read("oci-layout"))
            add("index.json", new_index)
            for digest, data in ((config_digest, config_bytes), (manifest_digest, manifest_bytes)):
                add("blobs/sha256/" + digest.split(":", 1)[1], data)
            for layer in manifest["layers"]:
                name = "blobs/sha256/" + layer["digest"].split(":", 1)[1]
                info = members[name]
                out.addfile(info, tar.extractfile(info))
    return manifest_digest
