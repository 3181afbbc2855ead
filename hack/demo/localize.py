"""Print a FineTuneJob manifest with the local cluster's overrides: CPU only, and S3 as pods reach it.

The local node has no GPU and pods reach the S3 server through the bridge gateway, not a cloud endpoint;
those are the only differences between the quickstart a user applies and the one the demo applies.
"""

from __future__ import annotations

import argparse
import sys

import yaml


def localize(manifest: dict, s3_endpoint: str) -> dict:  # type: ignore[type-arg]
    spec = manifest["spec"]
    spec.setdefault("resources", {}).update({"gpus": 0, "cpu": "1", "memory": "6Gi"})
    spec.setdefault("storage", {})["endpoint"] = s3_endpoint
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("manifest")
    parser.add_argument("--s3-endpoint", required=True)
    args = parser.parse_args()
    with open(args.manifest) as handle:
        manifest = yaml.safe_load(handle)
    yaml.safe_dump(localize(manifest, args.s3_endpoint), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
