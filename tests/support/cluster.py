"""Find the Kubernetes cluster the tests run against.

`$KUBECONFIG` wins, so the same tests run against any real cluster; otherwise the local cluster that
`make cluster-up` started (its kubeconfig lives in the state folder). No cluster is a test failure with
instructions, never a silent skip.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """The local cluster's state folder: logs, certificates, kubeconfig, env file."""
    default = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator")) / "state"
    return Path(os.environ.get("FTO_STATE_DIR", default))


def kubeconfig_path() -> Path:
    explicit = os.environ.get("KUBECONFIG")
    if explicit:
        return Path(explicit)
    local = state_dir() / "kubeconfig"
    if local.exists():
        return local
    raise RuntimeError(
        "no Kubernetes cluster: run `make cluster-up` (the local cluster) or set KUBECONFIG to a real one"
    )


def is_local_cluster(kubeconfig: Path) -> bool:
    """True when the tests talk to the cluster `make cluster-up` made (kwok nodes, local S3)."""
    return kubeconfig.resolve() == (state_dir() / "kubeconfig").resolve()


def load_env_file() -> dict[str, str]:
    """The variables `make cluster-up` wrote (S3 endpoint and keys), if it ran."""
    env_file = state_dir() / "env"
    values: dict[str, str] = {}
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.removeprefix("export ").partition("=")
                values[key] = value.strip("'\"")
    return values
