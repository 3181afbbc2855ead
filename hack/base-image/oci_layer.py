"""Write a single-layer OCI image archive (for `ctr images import`) from a tar stream on stdin, in one pass.

Why (hack/base-image/vllm.sh): the vLLM CPU image is ~6 GB of files. buildah's vfs driver would copy them into
a container, copy them again into the committed layer, and compress them a third time into the archive; on a
shared machine that peaked at 13 GB of disk. Here the layer is compressed as it streams, straight into the
archive (its tar header written last, once its digest and size are known), so the only copy on disk is the
archive. Compression: zstd (level 1, all cores; `zstd` on PATH) when available, which containerd unpacks like
gzip: ~7x faster than gzip -1 on two busy cores and smaller; else gzip -1 (zlib, one core).

Usage: tar -C ROOT -cf - . | python oci_layer.py --output ARCHIVE --ref REF --config CONFIG_JSON [--gzip]
  CONFIG_JSON: the image config's "config" object (Env, User, Entrypoint, Cmd, WorkingDir, ExposedPorts, Labels).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

BLOCK = 512
CHUNK = 1 << 20


def header(name: str, size: int) -> bytes:
    """A tar header of exactly one block (GNU format: sizes over 8 GiB fit in base-256)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    data = info.tobuf(format=tarfile.GNU_FORMAT)
    assert len(data) == BLOCK, name
    return data


def pad(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def add(out: BinaryIO, name: str, data: bytes) -> None:
    out.write(header(name, len(data)) + data + pad(len(data)))


def blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _chunks(source: BinaryIO, seen: Callable[[bytes], None]) -> Iterator[bytes]:
    while chunk := source.read(CHUNK):
        seen(chunk)
        yield chunk


def gzip_stream(source: BinaryIO, seen: Callable[[bytes], None]) -> Iterator[bytes]:
    """gzip -1 in this process (mtime 0 in the header: deterministic)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    for chunk in _chunks(source, seen):
        yield compressor.compress(chunk)
    yield compressor.flush()


def zstd_stream(source: BinaryIO, seen: Callable[[bytes], None]) -> Iterator[bytes]:
    """zstd -1 on every core, fed by a thread (the uncompressed side is hashed on its way in)."""
    process = subprocess.Popen(["zstd", "-1", "-T0", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    failed: list[BaseException] = []

    def feed() -> None:
        try:
            for chunk in _chunks(source, seen):
                stdin.write(chunk)
        except BaseException as error:  # re-raised below, after the reader has drained
            failed.append(error)
        finally:
            stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    while packed := stdout.read(CHUNK):
        yield packed
    feeder.join()
    if failed:
        raise failed[0]
    if process.wait() != 0:
        raise RuntimeError(f"zstd exited with {process.returncode}")


def write_archive(source: BinaryIO, output: Path, ref: str, config: dict[str, object], zstd: bool = True) -> str:
    """Stream `source` (an uncompressed layer tar) into the compressed layer of a one-layer image archive;
    the layer's digest."""
    tmp = output.with_name(output.name + ".tmp")
    diff_id, digest = hashlib.sha256(), hashlib.sha256()
    size = 0
    stream, media = (zstd_stream, "zstd") if zstd else (gzip_stream, "gzip")
    with tmp.open("wb") as out:
        out.write(b"\0" * BLOCK)  # the layer's header, written once its name (digest) and size are known
        for packed in stream(source, diff_id.update):
            digest.update(packed)
            out.write(packed)
            size += len(packed)
        out.write(pad(size))
        layer = "sha256:" + digest.hexdigest()
        out.seek(0)
        out.write(header(blob_name(layer), size))
        out.seek(0, os.SEEK_END)
        image_config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id.hexdigest()]},
            },
            sort_keys=True,
        ).encode()
        config_digest = "sha256:" + hashlib.sha256(image_config).hexdigest()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(image_config),
                },
                "layers": [
                    {"mediaType": f"application/vnd.oci.image.layer.v1.tar+{media}", "digest": layer, "size": size}
                ],
            },
            sort_keys=True,
        ).encode()
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
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
        add(out, blob_name(config_digest), image_config)
        add(out, blob_name(manifest_digest), manifest)
        add(out, "index.json", index)
        add(out, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        out.write(b"\0" * (2 * BLOCK))  # end of archive
    tmp.replace(output)
    return layer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--ref", required=True, help="image name with tag, e.g. finetune.local/vllm:<key>")
    parser.add_argument("--config", type=Path, required=True, help="JSON file: the image config's config object")
    parser.add_argument("--gzip", action="store_true", help="gzip even when zstd is there")
    args = parser.parse_args(argv)
    zstd = not args.gzip and shutil.which("zstd") is not None
    layer = write_archive(sys.stdin.buffer, args.output, args.ref, json.loads(args.config.read_text()), zstd)
    print(f"{args.output}: layer {layer}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
