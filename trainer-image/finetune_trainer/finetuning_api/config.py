"""The API service's settings, read once from `FTO_API_*` environment variables (the chart sets them).

Why a frozen dataclass read from the environment: the service is stateless and every replica must behave the
same, so its whole configuration is these variables, checked at start with an error naming the variable (a
typo fails the pod at once instead of at the first upload). Listen address and port are `FTO_API_HOST` /
`FTO_API_LISTEN_PORT` (not `FTO_API_PORT`: the project's dev cluster scripts use that name for the
kube-apiserver's port).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from finetune_trainer.core.errors import ConfigInvalid
from finetune_trainer.core.storage import on_off

DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024
DEFAULT_CATALOG = "/etc/finetune-api/models.yaml"
DEFAULT_CREDENTIALS_SECRET = "finetune-storage"


@dataclass(frozen=True)
class ApiConfig:
    """Where uploaded files go and how the service reaches Kubernetes.

    `bucket`/`s3_endpoint`/`s3_region`: the files store (every namespace's files live under `<namespace>/files/`
    of this bucket, written with that namespace's own credentials). `s3_etag_md5`: False for an S3-compatible
    store whose single-PUT ETags are not MD5s of the bytes: every job the API creates then says
    `spec.storage.etagIsMd5: false`, so its pods do not refuse a base model or checkpoint whose ETag is no MD5,
    and the service's own reads of a run's results (file_objects.read_object) do not either.
    `credentials_secret`: the Secret, in each namespace, holding AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for that
    store (read as the caller, so a caller without RBAC on it cannot upload). `kubeconfig`: empty = in-cluster
    ServiceAccount.
    """

    bucket: str
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    s3_etag_md5: bool = True
    credentials_secret: str = DEFAULT_CREDENTIALS_SECRET
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    catalog_path: str = DEFAULT_CATALOG
    kubeconfig: str = ""
    host: str = "0.0.0.0"  # a pod's server listens on all its interfaces; the Service fronts it
    port: int = 8080

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiConfig:
        """Read the `FTO_API_*` variables; a missing bucket or a bad number is ConfigInvalid naming the variable."""
        env = os.environ if env is None else env
        bucket = env.get("FTO_API_BUCKET", "").strip()
        if not bucket:
            raise ConfigInvalid("FTO_API_BUCKET is empty: set the bucket that holds uploaded files (api.files.bucket)")
        return cls(
            bucket=bucket,
            s3_endpoint=env.get("FTO_API_S3_ENDPOINT", "").strip(),
            s3_region=env.get("FTO_API_S3_REGION", "").strip() or "us-east-1",
            s3_etag_md5=on_off("FTO_API_S3_ETAG_MD5", env.get("FTO_API_S3_ETAG_MD5", ""), default=True),
            credentials_secret=env.get("FTO_API_CREDENTIALS_SECRET", "").strip() or DEFAULT_CREDENTIALS_SECRET,
            max_upload_bytes=_positive_int(env, "FTO_API_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES),
            catalog_path=env.get("FTO_API_CATALOG", "").strip() or DEFAULT_CATALOG,
            kubeconfig=env.get("FTO_API_KUBECONFIG", "").strip(),
            host=env.get("FTO_API_HOST", "").strip() or "0.0.0.0",
            port=_positive_int(env, "FTO_API_LISTEN_PORT", 8080),
        )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigInvalid(f"{name}={raw!r} is not an integer") from None
    if value <= 0:
        raise ConfigInvalid(f"{name}={raw!r} must be positive")
    return value
