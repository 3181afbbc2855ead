"""Ask the fine-tuned endpoint held-out questions; print its answers beside the base model's, and both scores.

Why side by side: the demo exists to show that fine-tuning changed something real, measured on questions the
model never saw (`dataset.py`: the test split holds other paraphrases of the training intents). Printed:
  - for a few test questions (`dataset.SHOWN`): the shop's answer, the base model's and the fine-tuned one. The
    fine-tuned answer comes live from the FineTuneJob's published endpoint, through `kubectl port-forward` (the
    local cluster has no kube-proxy on the host) and the official OpenAI client, greedy, with the data's system
    prompt. The base answer is SmolLM2-135M-Instruct's own to the same test prompt, generated greedily by the
    trainer before training (`evaluation.compareBaseModel`; the run's metrics.json keeps both models' answers);
  - the scores on the whole test split, base and fine-tuned: exact match, token F1 and ROUGE-L of the answers
    (`evaluation.generation`), test loss and perplexity, and the step kept (early stopping on validation loss).
The endpoint's API key is read from the Secret `status.serving.apiKeySecret` names (`endpoint_key`).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataset import SYSTEM, shown_questions  # a sibling script, not a package

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
SCORES = ("exact_match", "token_f1", "rouge_l", "loss", "perplexity")
"""The test metrics printed, base beside fine-tuned (generation scores first: they say whether answers are right)."""


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


def read_s3_json(uri: str) -> dict[str, Any]:
    import boto3

    parsed = urlparse(uri)
    body = boto3.client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
    document: dict[str, Any] = json.loads(body)
    return document


def base_answers(document: dict[str, Any]) -> dict[str, str]:
    """The base model's answer to each test question, from metrics.json's generation rows (compareBaseModel)."""
    answers = {}
    for row in document.get("generation") or []:
        user = [line for line in str(row.get("prompt", "")).splitlines() if line.startswith("user: ")]
        if user and "baseAnswer" in row:
            answers[user[-1].removeprefix("user: ")] = str(row["baseAnswer"])
    return answers


def score_lines(base: dict[str, Any], tuned: dict[str, Any]) -> list[str]:
    """`metric  base  fine-tuned` rows for the test metrics either model has."""
    lines = [f"{'test metric':<12} {'base':>8} {'fine-tuned':>11}"]
    for name in SCORES:
        if name in base or name in tuned:
            cells = [f"{m[name]:.3f}" if name in m else "-" for m in (base, tuned)]
            lines.append(f"{name:<12} {cells[0]:>8} {cells[1]:>11}")
    return lines


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
    ftj: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(  # type: ignore[assignment]
        GROUP, VERSION, args.namespace, PLURAL, args.name
    )
    status = ftj["status"]
    endpoint = status["endpoint"]
    shown = shown_questions()
    questions = [question for question, _ in shown.values()]
    key = endpoint_key(client.CoreV1Api(), args.namespace, status)

    with endpoint_forward(args.namespace, endpoint["url"]) as url:
        tuned = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)
        served = wait_for_models(tuned, timeout=60)
        keyed = "no API key (allowUnauthenticated)" if key == "none" else "with its API key"
        print(f"endpoint {endpoint['url']} serves {served} (run {endpoint.get('run')}, {keyed})", flush=True)
        tuned_answers = ask(tuned, endpoint["model"], questions, args.max_tokens)
    run_folder = status["artifacts"]["report"].rsplit("/", 1)[0]
    document = read_s3_json(f"{run_folder}/metrics.json")
    before = base_answers(document)

    print(f"\nsystem prompt: {SYSTEM}  (greedy, max_tokens {args.max_tokens}; test questions, not in training)")
    for (question, reference), after in zip(shown.values(), tuned_answers, strict=True):
        print(f"\nuser:       {question}")
        print(f"shop:       {reference}")
        print(f"base:       {before.get(question, '(not in metrics.json)')}")
        print(f"fine-tuned: {after}")
    samples = len(document.get("generation") or [])
    print(
        f"\n{samples} test questions, answered by both models; run {document.get('run')}: {document.get('steps')} "
        f"steps in {document.get('trainRuntimeSeconds')} s; kept {document.get('selection') or 'the last step'}"
    )
    base, tuned = (document.get("baseModel") or {}).get("test") or {}, (status.get("metrics") or {}).get("test") or {}
    for line in score_lines(base, tuned):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
