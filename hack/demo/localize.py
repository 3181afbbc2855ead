"""Write a FineTuneJob manifest with the local cluster's overrides, and print what they changed.

The local node has no GPU and pods reach the S3 server through the bridge gateway, not a cloud endpoint;
those are the only differences between the quickstart a user applies and the one the demo applies, and the
demo prints them (one `field: before -> after` line each) so nobody has to take that on trust.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

LOCAL_RESOURCES = {"gpus": 0, "cpu": "1", "memory": "6Gi"}
"""The local node: no GPU, two cores shared with the cluster (no CPU limit: the trainer may use both)."""


def localize(manifest: dict[str, Any], s3_endpoint: str) -> dict[str, Any]:
    """`manifest` with the local overrides applied (changed in place and returned)."""
    spec = manifest["spec"]
    spec.setdefault("resources", {}).update(LOCAL_RESOURCES)
    spec.setdefault("storage", {})["endpoint"] = s3_endpoint
    return manifest


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every scalar or list in a nested mapping."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}.{key}" if path else str(key))
    else:
        yield path, value


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One `path: old -> new` line per field that differs (`(unset)` where a side has none)."""
    old, new = dict(leaves(before)), dict(leaves(after))
    return [
        f"{path}: {old.get(path, '(unset)')} -> {new.get(path, '(unset)')}"
        for path in sorted(old.keys() | new.keys())
        if old.get(path, "(unset)") != new.get(path, "(unset)")
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--s3-endpoint", required=True, help="the S3 endpoint as pods reach it")
    parser.add_argument("--out", type=Path, required=True, help="where to write the localized manifest")
    args = parser.parse_args()
    original = yaml.safe_load(args.manifest.read_text())
    local = localize(yaml.safe_load(args.manifest.read_text()), args.s3_endpoint)
    args.out.write_text(yaml.safe_dump(local, sort_keys=False))
    print(f"local overrides of {args.manifest} (written to {args.out}):")
    for line in changes(original, local):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
