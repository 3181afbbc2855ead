"""Ask the base model and the fine-tuned endpoint the same held-out questions; print both answers and losses.

Why side by side: the demo exists to show that fine-tuning changed something real. The same questions (never
in the training data, `seed.HELD_OUT`), the same system prompt, greedy decoding, asked of
  base        SmolLM2-135M-Instruct as the FineTuneJob's `spec.baseModel.uri` holds it, served here by our
              own server (`finetune_trainer.serving.server`, the code the endpoint runs) on a free local port;
  fine-tuned  the FineTuneJob's published endpoint, reached through `kubectl port-forward` (the local cluster
              has no kube-proxy on the host, so the demo reaches the Service as a developer would);
both through the official OpenAI client. Below them, the test loss of the base model (the trainer measures it
before the first step when `evaluation.compareBaseModel` is true, into the run's metrics.json) and of the
fine-tuned one (status.metrics), on the same held-out test split.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed import HELD_OUT, SYSTEM  # a sibling script, not a package

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_models(openai: Any, timeout: float = 300) -> list[str]:
    """The served model ids, once the server answers (a port-forward or a model load takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return [m.id for m in openai.models.list().data]
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def ask(openai: Any, model: str, questions: list[str], max_tokens: int) -> list[str]:
    """Greedy answers to `questions`, asked concurrently: our server decodes them as one batch."""

    def one(question: str) -> str:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        reply = openai.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        return str(reply.choices[0].message.content or "").strip()

    with ThreadPoolExecutor(len(questions)) as pool:
        return list(pool.map(one, questions))


def endpoint_key(core: Any, namespace: str, status: dict[str, Any]) -> str:
    """The endpoint's API key, read as a user does (kubectl get secret NAME -o jsonpath='{.data.apiKey}' | base64
    -d) from the Secret status.serving.apiKeySecret names (the operator generated it unless the manifest named
    one); "none" for an endpoint whose manifest opted out (serving.allowUnauthenticated)."""
    secret = (status.get("serving") or {}).get("apiKeySecret")
    if not secret:
        return "none"
    data = core.read_namespaced_secret(secret, namespace).data
    return base64.b64decode(data["apiKey"]).decode()


@contextmanager
def endpoint_forward(namespace: str, url: str) -> Iterator[str]:
    """The base URL of the in-cluster endpoint `url`, reached through `kubectl port-forward`."""
    parsed = urlparse(url)
    service, port = (parsed.hostname or "").split(".")[0], parsed.port or 80
    local = free_port()
    forward = subprocess.Popen(
        ["kubectl", "-n", namespace, "port-forward", f"svc/{service}", f"{local}:{port}", "--address", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{local}{parsed.path}"
    finally:
        forward.terminate()
        forward.wait(10)


@contextmanager
def local_server(model_uri: str, name: str) -> Iterator[str]:
    """Our model server, in this process on a free port, serving the full model at `model_uri` (s3:// or a folder).

    S3 is reached with the standard AWS_* variables, as in the pod."""
    import uvicorn
    from finetune_trainer.serving.server.app import create_app
    from finetune_trainer.serving.server.config import ServeConfig, ServeSettings

    with tempfile.TemporaryDirectory(prefix="fto-base-") as work:
        config = ServeConfig(servedModelName=name, modelUri=model_uri)
        app = create_app(ServeSettings(config=config, work_dir=Path(work), device="cpu"))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            server.should_exit = True
            thread.join(30)


def read_s3_json(uri: str) -> dict[str, Any]:
    import boto3

    parsed = urlparse(uri)
    body = boto3.client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
    document: dict[str, Any] = json.loads(body)
    return document


def loss_line(label: str, metrics: dict[str, Any]) -> str:
    test = metrics.get("test") or {}
    if "loss" not in test:
        return f"{label:<11} (no test metrics)"
    perplexity = f", perplexity {test['perplexity']:.2f}" if "perplexity" in test else ""
    return f"{label:<11} test loss {test['loss']:.3f}{perplexity}"


def main() -> int:
    from kubernetes import client, config
    from openai import OpenAI

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--s3-endpoint", default=os.environ.get("FTO_S3_ENDPOINT"))
    parser.add_argument("--access-key", default=os.environ.get("FTO_S3_ACCESS_KEY"))
    parser.add_argument("--secret-key", default=os.environ.get("FTO_S3_SECRET_KEY"))
    args = parser.parse_args()
    if not (args.s3_endpoint and args.access_key and args.secret_key):
        parser.error("S3 endpoint and keys: --s3-endpoint/--access-key/--secret-key or FTO_S3_* variables")
    os.environ.update(
        AWS_ENDPOINT_URL=args.s3_endpoint,
        AWS_ACCESS_KEY_ID=args.access_key,
        AWS_SECRET_ACCESS_KEY=args.secret_key,
        AWS_DEFAULT_REGION="us-east-1",
    )
    config.load_kube_config()  # type: ignore[no-untyped-call]
    api = client.CustomObjectsApi()
    ftj: dict[str, Any] = api.get_namespaced_custom_object(  # type: ignore[assignment]
        GROUP, VERSION, args.namespace, PLURAL, args.name
    )
    status, base_uri = ftj["status"], ftj["spec"]["baseModel"]["uri"]
    endpoint = status["endpoint"]
    questions = list(HELD_OUT.values())

    with endpoint_forward(args.namespace, endpoint["url"]) as url:
        key = endpoint_key(client.CoreV1Api(), args.namespace, status)
        tuned = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)
        served = wait_for_models(tuned, timeout=60)
        print(f"endpoint {endpoint['url']} serves {served} (run {endpoint.get('run')})", flush=True)
        tuned_answers = ask(tuned, endpoint["model"], questions, args.max_tokens)
    print(f"base model {base_uri}: served here by finetune_trainer.serving.server for the comparison", flush=True)
    with local_server(base_uri, "base") as url:
        base = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        wait_for_models(base)
        base_answers = ask(base, "base", questions, args.max_tokens)

    print(f"\nsystem prompt: {SYSTEM}  (greedy, max_tokens {args.max_tokens}; questions not in the training data)")
    for question, before, after in zip(questions, base_answers, tuned_answers, strict=True):
        print(f"\nuser:       {question}")
        print(f"base:       {before}")
        print(f"fine-tuned: {after}")
    run_folder = status["artifacts"]["report"].rsplit("/", 1)[0]
    document = read_s3_json(f"{run_folder}/metrics.json")
    print()
    print(loss_line("base", document.get("baseModel") or {}))
    print(loss_line("fine-tuned", status.get("metrics") or {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
