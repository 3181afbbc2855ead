"""hack/base-image/oci_layer.py: the one-pass writer of the vLLM CPU image's archive (a tar stream in, a one-layer
OCI archive out). Checked the way containerd reads it: the index names the manifest, the manifest the config and
the layer by their sha256, the config's diff_id is the uncompressed layer's sha256, and the layer unpacks to the
files that went in (a layer over 8 GiB is written the same way; its header is patched in place)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_archive_is_a_valid_one_layer_oci_image(tmp_path: Path, compression: str) -> None:
    if compression == "zstd" and not shutil.which("zstd"):
        pytest.fail("zstd is not installed (hack/install-deps.sh installs it): the image would fall back to gzip")
    root = tmp_path / "root"
    (root / "opt" / "bin").mkdir(parents=True)
    (root / "opt" / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n" + bytes(range(256)) * 4000)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("vllm:x:10001:10001::/home/vllm:/bin/sh\n")
    config = {"User": "10001:10001", "Entrypoint": ["python3", "-m", "x"], "Env": ["A=1"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    layer_tar = subprocess.run(["tar", "-C", str(root), "-cf", "-", "."], check=True, capture_output=True).stdout
    archive = tmp_path / "image.oci.tar"
    subprocess.run(
        [
            *(sys.executable, str(REPO / "hack" / "base-image" / "oci_layer.py"), "--output", str(archive)),
            *("--ref", "finetune.local/x:1", "--config", str(tmp_path / "config.json")),
            *(["--gzip"] if compression == "gzip" else []),
        ],
        input=layer_tar,
        check=True,
        capture_output=True,
    )
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())

        def read(name: str) -> bytes:
            member = tar.extractfile(name)
            assert member is not None, name
            return member.read()

        def blob(digest: str) -> bytes:
            data = read("blobs/sha256/" + digest.removeprefix("sha256:"))
            assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
            return data

        assert json.loads(read("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        (entry,) = json.loads(read("index.json"))["manifests"]
        assert entry["annotations"]["io.containerd.image.name"] == "finetune.local/x:1"
        manifest = json.loads(blob(entry["digest"]))
        image = json.loads(blob(manifest["config"]["digest"]))
        (layer_ref,) = manifest["layers"]
        layer = blob(layer_ref["digest"])
        assert layer_ref["size"] == len(layer)
        assert image["config"] == config
        assert image["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]
        assert layer_ref["mediaType"] == f"application/vnd.oci.image.layer.v1.tar+{compression}"
        if compression == "gzip":
            assert gzip.decompress(layer) == layer_tar
        else:
            unpacked = subprocess.run(["zstd", "-d", "-c"], input=layer, check=True, capture_output=True).stdout
            assert unpacked == layer_tar
        assert len(names) == 5, names  # three blobs, the index, the layout marker
    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as inner:
        assert "./opt/bin/tool" in inner.getnames()
