"""Writes a runc bundle config that runs a built image in place, for `hack/build-images.sh run`.

With buildah's vfs driver the top layer of an image is a complete root filesystem, so runc can run it
read-only where it lies: checking an image costs no copy of its GBs. The process is the image's own
ENTRYPOINT and CMD (or the given arguments instead of CMD), as the image's USER, with its ENV and
WORKDIR, no capabilities, and a network namespace of its own that has only loopback: the image must work
as the non-root user and without network, as in a pod.

Usage: runc_spec.py BUNDLE_DIR STORAGE_ROOT [--entrypoint PROG] [ARGS...]
(BUNDLE_DIR/image.json: `buildah inspect` output; --entrypoint replaces the image's ENTRYPOINT, as docker's)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def top_layer(storage: Path, image_id: str) -> Path:
    """The vfs directory of an image's top layer (containers/storage keeps the image->layer map in JSON)."""
    images = json.loads((storage / "vfs-images" / "images.json").read_text())
    layer: str = next(i["layer"] for i in images if i["id"] == image_id)
    return storage / "vfs" / "dir" / layer


def spec(image: dict[str, Any], rootfs: Path, args: list[str], entrypoint: list[str] | None) -> dict[str, Any]:
    cfg = image["OCIv1"]["config"]
    if entrypoint is None:
        entrypoint = cfg.get("Entrypoint") or []
    uid, _, gid = (cfg.get("User") or "0").partition(":")
    if not uid.isdigit() or not (gid or uid).isdigit():
        raise SystemExit(f"runc_spec: USER {cfg.get('User')!r} is not numeric")
    workdir = cfg.get("WorkingDir") or "/"
    tmpfs = {"type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
    # owned by the image's user, as an emptyDir with fsGroup (or a home directory) would be
    owned = {
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=0755", f"uid={uid}", f"gid={gid or uid}"],
    }
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "nodev", "mode=1777"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        # the writable places a pod gives: /tmp, the work dir (an emptyDir) and HOME
        {"destination": "/tmp", **tmpfs},
        {"destination": "/work", **owned},
    ]
    if workdir not in ("/", "/tmp", "/work"):
        mounts.append({"destination": workdir, **owned})
    caps: dict[str, list[str]] = {k: [] for k in ("bounding", "effective", "permitted", "ambient")}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": int(uid), "gid": int(gid or uid)},
            "args": entrypoint + (args or cfg.get("Cmd") or []),
            "env": cfg.get("Env") or [],
            "cwd": workdir,
            "noNewPrivileges": True,
            "capabilities": caps,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "fto-image-check",
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def main(argv: list[str]) -> int:
    bundle, storage, args = Path(argv[0]), Path(argv[1]), argv[2:]
    entrypoint = None
    if args[:1] == ["--entrypoint"] and len(args) >= 2:
        entrypoint, args = [args[1]], args[2:]
    image = json.loads((bundle / "image.json").read_text())
    rootfs = top_layer(storage, image["FromImageID"])
    (bundle / "config.json").write_text(json.dumps(spec(image, rootfs, args, entrypoint), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
