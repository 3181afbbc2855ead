"""Call the FineTuneJob's published endpoint with the official OpenAI client, through `kubectl port-forward`.

The endpoint URL in status is the in-cluster Service address; the local cluster has no kube-proxy on the host,
so the demo reaches the Service the way a developer reaches any cluster Service from a laptop.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

from kubernetes import client, config
from openai import OpenAI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--question", default="How do I reset my password?")
    args = parser.parse_args()
    config.load_kube_config()
    ftj = client.CustomObjectsApi().get_namespaced_custom_object(
        "finetune.dev", "v1alpha1", args.namespace, "finetunejobs", args.name
    )
    endpoint = ftj["status"]["endpoint"]
    url = urlparse(endpoint["url"])
    service, port = url.hostname.split(".")[0], url.port or 80  # type: ignore[union-attr]
    local = free_port()
    forward = subprocess.Popen(
        [
            "kubectl",
            "-n",
            args.namespace,
            "port-forward",
            f"svc/{service}",
            f"{local}:{port}",
            "--address",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        openai = OpenAI(base_url=f"http://127.0.0.1:{local}{url.path}", api_key="unused", max_retries=0)
        for _ in range(60):
            try:
                models = [m.id for m in openai.models.list().data]
                break
            except Exception:  # the port-forward takes a moment to listen
                time.sleep(1)
        else:
            print("the endpoint did not answer through port-forward", file=sys.stderr)
            return 1
        print(f"endpoint {endpoint['url']} serves {models} (run {endpoint.get('run')})")
        print(f"user: {args.question}")
        reply = openai.chat.completions.create(
            model=endpoint["model"], messages=[{"role": "user", "content": args.question}], max_tokens=40, temperature=0
        )
        print(f"assistant: {reply.choices[0].message.content}")
        print(f"usage: {reply.usage}")
        return 0
    finally:
        forward.terminate()


if __name__ == "__main__":
    sys.exit(main())
