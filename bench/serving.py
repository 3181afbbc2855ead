"""Benchmark of the serving engines: ours (`transformers`) vs vLLM's CPU build, on the same model and adapter.

Side by side, in one run, on loopback: SmolLM2-135M-Instruct (the demo's real pretrained base, converted once
from its PyPI package by `finetune_trainer.devtools.smollm2`) with a LoRA adapter (rank 8 on every linear layer,
made here with peft, seeded, non-zero), served as an operator's pods serve it:
  ours      finetune_trainer.serving.server (the adapter merged at load, one engine thread, continuous batching) behind
            FastAPI + uvicorn, in this venv; `--threads` torch threads (default 1, see below);
  vllm      vLLM's CPU build from the vLLM venv (hack/venv-vllm.sh, `$FTO_VLLM_VENV`), with the operator's CPU
            flags (builders/containers.py VLLM_DEVICES["cpu"]: float32, 2048-token context, 2 GiB KV cache), the
            adapter as a LoRA module (`--enable-lora`, the adapter's tokenizer), `--max-num-seqs 8`, LD_PRELOAD
            of tcmalloc (when Debian's libtcmalloc-minimal4 is installed) and intel-openmp's libiomp5 as in
            its image; its own OpenMP threads (all cores: what a user gets);
  baseline  (with `--engines ...,baseline`) a transformers `pipeline("text-generation")` called per request
            behind the same FastAPI: the naive server.
Every request is a streamed `/v1/completions` for the adapter's name (greedy, `--max-tokens`), so each gives its
time to first token as well as its latency. The load generator (asyncio + httpx, closed loop: each of C clients
sends its next request when the previous one is answered) runs in this process, and alternates between the
servers (single requests at concurrency 1, slices of --requests at 8), so a busy machine hurts all alike.
Memory: RSS and PSS summed over each server's process tree (vLLM runs 3-4 processes), after the load.
The load average is printed at the start and the end: quote it with the figures.

Usage: python bench/serving.py [--engines ours,vllm] [--requests 16] [--max-tokens 32] [--rounds 4] [--tiny]
The last line of output is one JSON object with every figure and the ratios of each engine to ours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "How do I reset my password?",
    "What is a fine tuned model?",
    "Kubernetes schedules the",
    "Write one sentence about the sea.",
    "Serving tokens over http is",
    "The gate compares the",
    "Object storage keeps",
    "Give me one more reason to",
]
MODEL_NAME = "bench-model"
CACHE = Path(os.environ.get("FTO_CACHE") or Path.home() / ".cache" / "finetune-operator")
VLLM_VENV = Path(os.environ.get("FTO_VLLM_VENV") or CACHE / "venv-vllm")
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct (30 layers x 576, vocab 49152) + LoRA r=8 all-linear, fp32, cpu",
    "tiny": "llama 4x256, vocab 1000 + LoRA r=8 all-linear, fp32, cpu",
}


def build_model(folder: Path, tiny_model: bool = False) -> tuple[Path, Path]:
    """The base (SmolLM2-135M-Instruct, converted once and cached; or a small random Llama with a tokenizer
    trained here) and a LoRA adapter for it in `folder`/adapter, with the base's tokenizer beside it."""
    import torch
    from finetune_trainer.devtools import smollm2, tiny
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if tiny_model:
        words = " ".join(PROMPTS).split() + [f"w{i}" for i in range(300)]
        corpus = [" ".join(words[(i * 7) % len(words) :][:40]) for i in range(400)]
        tokenizer = tiny.train_tokenizer(corpus, vocab_size=1000, unk_token=None, add_bos=False)
        base = tiny.build_causal_lm(
            folder / "base",
            tokenizer,
            seed=0,
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=2048,
        )
    else:
        base = smollm2.model_folder()
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    with torch.no_grad():  # peft starts B at zero (the adapter would be the base): give it some weight
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)
    adapter = folder / "adapter"
    model.save_pretrained(str(adapter))
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    return base, adapter


def ours_app(base: Path, adapter: Path) -> Any:
    from finetune_trainer.serving.server.app import create_app
    from finetune_trainer.serving.server.config import ServeConfig, ServeSettings
    from finetune_trainer.serving.server.engine import Engine
    from finetune_trainer.serving.server.loader import load

    config = ServeConfig(servedModelName=MODEL_NAME, baseModelUri=str(base), modelUri=str(adapter), maxConcurrency=8)
    engine = Engine(load(config, adapter.parent / "ours-work", "cpu"), max_batch_size=config.max_concurrency)
    return create_app(ServeSettings(config=config, device="cpu"), engine=engine)


def baseline_app(base: Path, adapter: Path) -> Any:
    """The naive server: one pipeline call per request in a plain (thread-pool) FastAPI endpoint."""
    import torch
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    generator = pipeline("text-generation", model=model.merge_and_unload(), tokenizer=tokenizer, device="cpu")
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/completions")
    def completions(body: dict[str, Any]) -> StreamingResponse:
        output = generator(
            body["prompt"], max_new_tokens=body.get("max_tokens", 16), do_sample=False, return_full_text=False
        )
        chunk = {"object": "text_completion", "model": body["model"], "choices": [{"index": 0, "text": ""}]}
        chunk["choices"][0]["text"] = output[0]["generated_text"]
        # the whole text in one event: a pipeline cannot stream, its first token comes with its last
        return StreamingResponse(iter([f"data: {json.dumps(chunk)}\n\n", "data: [DONE]\n\n"]))

    return app


def serve(kind: str, base: Path, adapter: Path, port: int, threads: int) -> None:
    """The child process of ours or the baseline: one server on 127.0.0.1:port."""
    import torch
    import uvicorn

    torch.set_num_threads(threads)
    app = ours_app(base, adapter) if kind == "ours" else baseline_app(base, adapter)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def vllm_command(base: Path, adapter: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """vLLM's CPU server as the operator's CPU pods run it (builders/containers.py), on loopback."""
    from finetune_operator.builders.containers import VLLM_DEVICES

    device = VLLM_DEVICES["cpu"]
    python = VLLM_VENV / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"no vLLM venv at {VLLM_VENV}: run hack/venv-vllm.sh (or --engines ours,baseline)")
    preload = [str(p) for p in (TCMALLOC, VLLM_VENV / "lib" / "libiomp5.so") if p.is_file()]
    env = {
        **os.environ,
        **dict(device.env),
        "VLLM_TARGET_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "LD_PRELOAD": ":".join(preload),
        "PYTHONPATH": "",
    }
    command = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        *("--model", str(base), "--served-model-name", f"{MODEL_NAME}-base", "--tokenizer", str(adapter)),
        *("--enable-lora", "--lora-modules", f"{MODEL_NAME}={adapter}", "--max-loras", "1", "--max-lora-rank", "8"),
        *("--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", "8"),
        *device.args,
    ]
    return command, env


def start(kind: str, base: Path, adapter: Path, threads: int, logs: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """One server process; its URL and readiness path."""
    port = free_port()
    log = (logs / f"{kind}.log").open("wb")
    if kind == "vllm":
        command, env = vllm_command(base, adapter, port)
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        return process, f"http://127.0.0.1:{port}", "/health"
    command = [sys.executable, __file__, "--serve", kind, "--base", str(base), "--adapter", str(adapter)]
    command += ["--port", str(port), "--threads", str(threads)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}", "/readyz"


async def wait_ready(url: str, path: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> float:
    """Seconds until the server answers its readiness path."""
    import httpx

    started = time.monotonic()
    async with httpx.AsyncClient() as client:
        while True:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"server {url} exited with {process.returncode}:\n{tail}")
            try:
                if (await client.get(url + path)).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"server {url} not ready after {timeout}s")
            await asyncio.sleep(0.5)


async def load(url: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """Closed-loop load of streamed completions: each request's latency and time to first token, the time taken."""
    import httpx

    latencies: list[float] = []
    firsts: list[float] = []
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
                "stream": True,
            }
            started = time.perf_counter()
            first = None
            async with client.stream("POST", url + "/v1/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    text = "".join(c.get("text") or "" for c in json.loads(line[6:]).get("choices") or [])
                    if text and first is None:
                        first = time.perf_counter() - started
                    chars += len(text)
            latencies.append(time.perf_counter() - started)
            firsts.append(first if first is not None else latencies[-1])

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "firsts": firsts, "seconds": elapsed, "chars": chars}


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    """All slices pooled: total requests over total time; percentiles over every request."""
    ordered = sorted(latency for run in runs for latency in run["latencies"])
    firsts = sorted(first for run in runs for first in run["firsts"])
    seconds = sum(run["seconds"] for run in runs)
    return {
        "requests": len(ordered),
        "rps": round(len(ordered) / seconds, 3),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * percentile(ordered, 0.99), 1),
        "ttft_p50_ms": round(1000 * statistics.median(firsts), 1),
        "ttft_p99_ms": round(1000 * percentile(firsts, 0.99), 1),
        "chars": int(sum(run["chars"] for run in runs)),
    }


def memory(pid: int) -> dict[str, float]:
    """RSS and PSS (GiB) summed over a server's process tree (PSS splits shared pages: no double count)."""
    import psutil

    root = psutil.Process(pid)
    rss = pss = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except psutil.Error:  # gone, or not ours to read
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return {"rss_gib": round(rss / 2**30, 2), "pss_gib": round(pss / 2**30, 2)}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def bench(
    base: Path, adapter: Path, engines: list[str], requests: int, max_tokens: int, rounds: int, threads: int, logs: Path
) -> dict[str, Any]:
    load_start = loadavg()
    print(f"load average at start {load_start}; engines {engines}; logs in {logs}", flush=True)
    servers: dict[str, tuple[subprocess.Popen[bytes], str, str]] = {}
    started: dict[str, float] = {}
    try:
        for kind in engines:  # one at a time: start-up times are then each engine's own
            servers[kind] = start(kind, base, adapter, threads, logs)
            process, url, path = servers[kind]
            started[kind] = round(await wait_ready(url, path, process, logs / f"{kind}.log", 900), 1)
            print(f"{kind:9s} ready in {started[kind]} s", flush=True)
        for _, url, _ in servers.values():  # warm up (first-call allocations, vLLM's LoRA kernels)
            await load(url, 2, 4, max_tokens)
        results: dict[str, dict[str, list[dict[str, Any]]]] = {kind: {"c1": [], "c8": []} for kind in servers}
        for round_index in range(rounds):  # short slices, alternating, so load bursts hit every engine alike
            order = list(servers.items()) if round_index % 2 == 0 else list(reversed(servers.items()))
            for _ in range(max(1, requests // 4)):  # concurrency 1: single requests, alternating
                for kind, (_, url, _) in order:
                    results[kind]["c1"].append(await load(url, 1, 1, max_tokens))
            for kind, (_, url, _) in order:
                results[kind]["c8"].append(await load(url, 8, requests, max_tokens))
        mem = {kind: memory(process.pid) for kind, (process, _, _) in servers.items()}
    finally:
        for process, _, _ in servers.values():
            process.terminate()
        for process, _, _ in servers.values():
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    summary = {kind: {key: summarize(runs) for key, runs in per.items()} for kind, per in results.items()}
    load_end = loadavg()
    columns = ("req", "req/s", "p50 ms", "p99 ms", "ttft p50", "ttft p99")
    print("\n" + " " * 13 + " ".join(f"{c:>9s}" for c in columns))
    for kind, per in summary.items():
        for key, f in per.items():
            print(
                f"{kind:9s} {key:3s} {f['requests']:9.0f} {f['rps']:9.2f} {f['p50_ms']:9.1f} {f['p99_ms']:9.1f} "
                f"{f['ttft_p50_ms']:9.1f} {f['ttft_p99_ms']:9.1f}"
            )
    for kind in servers:
        print(f"{kind:9s} start {started[kind]} s, RSS {mem[kind]['rss_gib']} GiB, PSS {mem[kind]['pss_gib']} GiB")
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for kind in servers:
        if kind == "ours":
            continue
        ratios[f"{kind}/ours"] = {
            key: {
                "rps": round(summary[kind][key]["rps"] / summary["ours"][key]["rps"], 2),
                "p50": round(summary[kind][key]["p50_ms"] / summary["ours"][key]["p50_ms"], 2),
                "p99": round(summary[kind][key]["p99_ms"] / summary["ours"][key]["p99_ms"], 2),
                "ttft_p50": round(summary[kind][key]["ttft_p50_ms"] / summary["ours"][key]["ttft_p50_ms"], 2),
            }
            for key in ("c1", "c8")
        }
        ratios[f"{kind}/ours"]["pss"] = {"x": round(mem[kind]["pss_gib"] / max(mem["ours"]["pss_gib"], 0.01), 2)}
        for key in ("c1", "c8"):
            r = ratios[f"{kind}/ours"][key]
            print(f"{kind}/ours {key}: req/s x{r['rps']}, p50 x{r['p50']}, p99 x{r['p99']}, ttft p50 x{r['ttft_p50']}")
        print(f"{kind}/ours memory (PSS): x{ratios[f'{kind}/ours']['pss']['x']}")
    print(f"load average at start {load_start}, at end {load_end}", flush=True)
    return {
        "benchmark": "serving",
        "max_tokens": max_tokens,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "ours_torch_threads": threads,
        "start_seconds": started,
        "memory": mem,
        **{kind: summary[kind] for kind in servers},
        "ratios": ratios,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--engines", default="ours,vllm", help="comma-separated: ours (always), vllm, baseline")
    parser.add_argument(
        "--requests",
        type=int,
        default=16,
        help="requests per slice at concurrency 8 (a quarter as many at concurrency 1)",
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices per server and concurrency")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads of ours and the baseline (vLLM: its own)"
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of SmolLM2-135M-Instruct")
    parser.add_argument("--serve", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.serve:
        serve(args.serve, args.base, args.adapter, args.port, args.threads)
        return 0
    engines = ["ours"] + [e for e in args.engines.split(",") if e and e != "ours"]
    if any(e not in ("vllm", "baseline") for e in engines[1:]):
        parser.error("--engines takes ours, vllm, baseline")
    if not 1 <= args.requests <= 1000 or not 1 <= args.rounds <= 20 or not 1 <= args.max_tokens <= 256:
        parser.error("--requests must be in 1..1000, --rounds in 1..20, --max-tokens in 1..256")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        base, adapter = build_model(Path(tmp), args.tiny)
        logs = Path(tmp) / "logs"
        logs.mkdir()
        try:
            result = asyncio.run(
                bench(base, adapter, engines, args.requests, args.max_tokens, args.rounds, args.threads, logs)
            )
        except BaseException:
            kept = Path(tempfile.mkdtemp(prefix="bench-serving-logs-"))
            shutil.copytree(logs, kept, dirs_exist_ok=True)
            print(f"server logs kept in {kept}", file=sys.stderr)
            raise
    result["model"] = MODELS["tiny" if args.tiny else "smollm2"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
