"""The pinned versions of hack/versions.env (what hack/build-binaries.sh builds and keys its caches by)."""

from __future__ import annotations

from pathlib import Path

VERSIONS_ENV = Path(__file__).resolve().parents[2] / "hack" / "versions.env"


def pinned(name: str) -> str:
    """The value of `NAME=value` in hack/versions.env; a missing name is a KeyError that names it."""
    for line in VERSIONS_ENV.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    raise KeyError(f"{name} is not pinned in {VERSIONS_ENV}")
