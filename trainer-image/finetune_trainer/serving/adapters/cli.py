"""`python -m finetune_trainer adapters`: the sidecar of a shared model server (a ModelServer's pod).

Every few seconds: read the desired list (the operator's ConfigMap, through the API with the sidecar's own
token; its Role reads that one ConfigMap), read what the engine serves (GET /v1/models on localhost), act
(`sync.plan_sync`: fetch an adapter from S3 into the pod's shared folder, verified against the manifest the
trainer wrote beside it (core/manifest.py), then /v1/load_lora_adapter or /v1/unload_lora_adapter on the
engine), and write what the engine serves under this pod's key of the report ConfigMap (the only other object
its Role may touch). The desired list itself is copied into the shared folder (`.adapters.json`): the tenant
keys our engine (or vLLM's gateway) checks are in it. The pure decisions are in `sync`; this is I/O only.
Nothing is remembered between passes: a restarted engine or sidecar converges from the two lists alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import ssl
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from finetune_trainer.core.fetch import download_model
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.core.storage import Storage
from finetune_trainer.serving.adapters.sync import (
    Load,
    Unload,
    parse_desired,
    plan_sync,
    refusal,
    report,
    served_of,
    stale_folders,
)

log = logging.getLogger("finetune_trainer.serving.adapters")

TOKEN_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ConfigMaps:
    """GET and merge-PATCH of ConfigMaps in one namespace with the pod's projected token (re-read each call:
    the kubelet rotates it)."""

    def __init__(self, namespace: str, server: str, token_dir: Path) -> None:
        self.namespace, self.server, self.token_dir = namespace, server.rstrip("/"), token_dir
        ca = token_dir / "ca.crt"
        self.context = ssl.create_default_context(cafile=str(ca)) if ca.is_file() else None

    def _request(self, method: str, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.server}/api/v1/namespaces/{self.namespace}/configmaps/{name}"
        token = (self.token_dir / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json"
            data = json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=15, context=self.context) as response:
            parsed: dict[str, Any] = json.loads(response.read() or b"{}")
            return parsed

    def data(self, name: str) -> dict[str, str]:
        found: dict[str, str] = self._request("GET", name).get("data") or {}
        return found

    def put_key(self, name: str, key: str, value: str) -> None:
        self._request("PATCH", name, {"data": {key: value}})


class EngineClient:
    """The engine in the same pod (ours or vLLM), on localhost, with the server's API key when it has one."""

    def __init__(self, url: str, api_key: str | None, admin_url: str | None = None, admin_token: str | None = None):
        self.url, self.api_key = url.rstrip("/"), api_key
        self.admin_url = (admin_url or url).rstrip("/")
        self.admin_token = admin_token if admin_url else api_key

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 600, admin: bool = False
    ) -> bytes:
        headers = {"Accept": "application/json"}
        key = self.admin_token if admin else self.api_key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        request = urllib.request.Request(
            (self.admin_url if admin else self.url) + path, data=data, headers=headers, method=method
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload: bytes = response.read()
            return payload

    def served(self) -> dict[str, str]:
        return served_of(json.loads(self._call("GET", "/v1/models", timeout=15)))

    def load(self, name: str, folder: str, run: int, inplace: bool) -> None:
        body = {"lora_name": name, "lora_path": folder, "load_inplace": inplace, "run": run}
        self._call("POST", "/v1/load_lora_adapter", body, admin=True)

    def unload(self, name: str) -> None:
        self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name}, admin=True)


VERIFIED = ".fto-verified"
"""Written into an adapter folder by the sidecar once its files matched the manifest: the only reason a folder
already in the pod is used without fetching it again (its content: the URI it was verified from)."""


def fetch_adapter(uri: str, folder: Path) -> None:
    """Copy the trained model folder at `uri` (s3:// only) to `folder`, verified against its manifest, atomically
    (a half-copied or unverified folder never looks like an adapter).

    A folder already there is used only when this sidecar verified it from the same URI (its `VERIFIED` file);
    anything else in its place is removed and fetched again.
    """
    if _verified(folder) == uri:
        return
    if folder.is_symlink() or folder.exists():
        log.warning("%s holds no adapter verified from %s: fetching it again", folder, uri)
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        else:
            folder.unlink()
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri}: only s3:// model folders are fetched")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder.parent))
    try:
        download_model(Storage(), S3Uri.parse(uri if uri.endswith("/") else uri + "/"), staging, require_manifest=True)
        if not (staging / "adapter_config.json").is_file():
            raise ValueError(f"{uri} holds no adapter_config.json: not a LoRA adapter")
        (staging / VERIFIED).write_text(uri)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _verified(folder: Path) -> str | None:
    """The URI the folder was verified from, or None (no folder, or not verified by this sidecar)."""
    marker = folder / VERIFIED
    if folder.is_symlink() or not folder.is_dir() or marker.is_symlink() or not marker.is_file():
        return None
    return marker.read_text()


def _error_text(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}: {error.read().decode(errors='replace')[:500]}"
    return f"{type(error).__name__}: {error}"[:500]


def sync_once(
    maps: ConfigMaps, engine: EngineClient, desired_name: str, dest: Path, namespace: str
) -> tuple[dict[str, Any], bool]:
    """One pass; returns this pod's report and whether it converged. `namespace` is the server's: an entry the
    sidecar refuses (`sync.refusal`) is reported under its name, never fetched, and unloaded if served."""
    text = maps.data(desired_name).get("adapters.json") or '{"adapters": []}'
    listed = parse_desired(json.loads(text))
    write_desired_copy(dest / DESIRED_COPY, text)  # the engine's (or gateway's) tenant keys (serving.auth)
    refused = {w.name: why for w in listed if (why := refusal(w, namespace)) is not None}
    for name, why in refused.items():
        log.error("%s: refused: %s", name, why)
    desired = [w for w in listed if w.name not in refused]
    served = engine.served()
    errors: dict[str, str] = {name: f"refused: {why}" for name, why in refused.items()}
    actions = plan_sync(desired, served, str(dest))
    for action in actions:
        try:
            if isinstance(action, Unload):
                engine.unload(action.name)
                log.info("unloaded %s", action.name)
            elif isinstance(action, Load):
                fetch_adapter(action.uri, Path(action.folder))
                engine.load(action.name, action.folder, action.run, action.inplace)
                log.info("loaded %s run %d%s", action.name, action.run, " (replacing)" if action.inplace else "")
        except Exception as error:  # one adapter's trouble must not stop the others
            errors[action.name] = _error_text(error)
            log.error("%s: %s", action.name, errors[action.name])
    served = engine.served() if actions else served
    existing = [str(run) for name in dest.glob("*") if name.is_dir() for run in name.glob("run-*") if run.is_dir()]
    for folder in stale_folders(existing, served):
        shutil.rmtree(folder, ignore_errors=True)
    return report(desired, served, str(dest), errors), not refused and not plan_sync(desired, served, str(dest))


DESIRED_COPY = ".adapters.json"
"""The desired list as the operator wrote it, kept in the pod's adapters emptyDir for the container that checks
keys (our server, or the gateway in front of vLLM): its entries' `keySha256` are the tenant keys."""


def write_desired_copy(path: Path, text: str) -> None:
    """`text` at `path` when it differs, atomically (written beside it, then renamed): a reader never sees half."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".new")
    staging.write_text(text, encoding="utf-8")
    staging.rename(path)


def admin_token(path: Path) -> str:
    """This pod's admin token: created once in the pod's own emptyDir (0600), which our server reads to check
    the adapter routes' callers; a restarted sidecar finds the same one."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".new")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
        staging.rename(path)
    return path.read_text(encoding="utf-8").strip()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_trainer adapters",
        description="Keep the engine in this pod serving the adapters of its ModelServer's desired list.",
    )
    parser.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--engine-url", default="http://127.0.0.1:8000")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--desired", required=True, help="the ConfigMap with adapters.json (the operator's)")
    parser.add_argument("--report", required=True, help="the ConfigMap this pod writes its key into")
    parser.add_argument("--dest", type=Path, default=Path("/adapters"))
    parser.add_argument(
        "--admin-url",
        default="http://127.0.0.1:8001",
        help="our engine's loopback admin listener (the adapter routes; vLLM: the engine URL)",
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between passes")
    parser.add_argument("--api-server", default="", help="default: the in-cluster address")
    parser.add_argument("--token-dir", type=Path, default=TOKEN_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = args.api_server or (
        f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ.get('KUBERNETES_SERVICE_PORT', '443')}"
    )
    pod = os.environ.get("POD_NAME") or os.uname().nodename
    maps = ConfigMaps(args.namespace, server, args.token_dir)
    api_key = os.environ.get("FTO_API_KEY") or None
    if args.engine == "transformers":  # our server: adapter routes on the admin listener with the pod's token
        token = admin_token(args.dest / ".admin-token")
        engine = EngineClient(args.engine_url, api_key, args.admin_url, token)
    else:
        engine = EngineClient(args.engine_url, api_key)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    last = ""
    while not stop.is_set():
        try:
            state, _ = sync_once(maps, engine, args.desired, args.dest, args.namespace)
        except Exception as error:  # the engine still starting, the API server away: try again
            state = {"adapters": [], "errors": {"sidecar": _error_text(error)}}
            log.warning("pass failed: %s", state["errors"]["sidecar"])
        text = json.dumps(state, sort_keys=True)
        if text != last:
            try:
                maps.put_key(args.report, pod, text)
                last = text
            except Exception as error:
                log.warning("report not written: %s", _error_text(error))
        stop.wait(args.interval)
    return 0
