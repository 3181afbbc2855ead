"""Benchmark of shared serving (#14): N LoRA adapters on one server vs N one-model servers of the same base.

What a user picks between: N FineTuneJobs with a Deployment each (each server holds its own copy of the base with
its adapter merged, `--max-loras 1`), or one ModelServer holding all N adapters on one unmerged base. Side by side,
in one run, on loopback, SmolLM2-135M-Instruct (the demo's real base; `--tiny`: a small random Llama) and N seeded,
non-zero LoRA adapters (rank 8, every linear layer), for N in --adapters (default 1,4,8):
  shared    one server process of ours (finetune_trainer.serving.server, serve.json maxAdapters N) with the N adapters
            loaded through /v1/load_lora_adapter, as the ModelServer's sidecar loads them;
  separate  N server processes of ours, each with one adapter merged (what a FineTuneJob's own Deployment runs).
With --engine vllm, the same two setups on vLLM's CPU build (the venv of `make venv-vllm`, the flags and
environment of the operator's CPU pods, builders/containers.py): shared is one vLLM server with the N adapters
(`--max-loras N`, loaded at start; the ModelServer's sidecar loads them at run time, the same LoRA path); separate
is N vLLM servers each with its base and one adapter (`--max-loras 1`, what a FineTuneJob with engine vllm runs).
A vLLM server takes ~6 GB here: `--separate 1` keeps to the one-model reference.
Load: a closed loop of streamed /v1/completions at concurrency 8 (each client sends its next request when the
previous one is answered), request i for adapter i mod N (shared: the model name; separate: that adapter's
server). Every server process gets `--threads` torch threads (default 1). Memory: RSS (and PSS, which splits
shared pages) summed over the server processes after the load. The one-model reference is `separate` at N=1: one
model serving alone. Targets (issue #14): memory of 8 shared adapters within 1.2x of one model, throughput at least
0.7x of one model alone. GPU memory is not measured here (no GPU on this machine).

Usage: python bench/shared_serving.py [--engine ours|vllm] [--adapters 1,4,8] [--separate 1,4,8] [--requests 32]
       [--max-tokens 32] [--rounds 2] [--tiny]
(--separate 1,4 leaves out the 8 one-model servers where 8 copies of the model do not fit in memory; the ratios to
one model alone still come from N=1.)
The last line of output is one JSON object with every figure and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_serving", HERE / "serving.py")
assert _spec and _spec.loader
serving = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serving)  # the serving benchmark's model builder, load generator and measurements

SERVER_NAME = "shared"


def build(folder: Path, count: int, tiny_model: bool) -> tuple[Path, list[Path]]:
    """The base and `count` adapters (seeds 0..count-1) with the base's tokenizer beside each."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _ = serving.build_model(folder, tiny_model)
    adapters = []
    for seed in range(count):
        torch.manual_seed(seed)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
            LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        with torch.no_grad():  # peft starts B at zero: give every adapter weight of its own
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.02)
        path = folder / f"adapter-{seed}"
        model.save_pretrained(str(path))
        AutoTokenizer.from_pretrained(base).save_pretrained(path)
        adapters.append(path)
    return base, adapters


def shared_app(base: Path, max_adapters: int) -> Any:
    from finetune_trainer.serving.server.app import create_app
    from finetune_trainer.serving.server.config import ServeConfig, ServeSettings
    from finetune_trainer.serving.server.engine import Engine
    from finetune_trainer.serving.server.loader import from_folder

    config = ServeConfig(
        servedModelName=SERVER_NAME, baseModelUri=str(base), modelUri=str(base), maxAdapters=max_adapters
    )
    engine = Engine(from_folder(base), max_batch_size=config.max_concurrency)
    return create_app(ServeSettings(config=config, device="cpu"), engine=engine)


def serve(kind: str, base: Path, adapter: Path | None, max_adapters: int, port: int, threads: int) -> None:
    """Child process: the shared server, or a one-model server (serving.ours_app: the adapter merged)."""
    import torch
    import uvicorn

    torch.set_num_threads(threads)
    app = shared_app(base, max_adapters) if kind == "shared" else serving.ours_app(base, adapter)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start(
    kind: str, base: Path, adapter: Path | None, max_adapters: int, threads: int, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = serving.free_port()
    command = [sys.executable, __file__, "--serve", kind, "--base", str(base), "--port", str(port)]
    command += ["--threads", str(threads), "--max-adapters", str(max_adapters)]
    if adapter is not None:
        command += ["--adapter", str(adapter)]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def start_vllm(base: Path, adapters: list[Path], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """One vLLM CPU server holding `adapters` as a0..aN-1 (one adapter: named as the one-model server's model)."""
    port = serving.free_port()
    command, env = serving.vllm_command(base, adapters[0], port)
    names = [serving.MODEL_NAME] if len(adapters) == 1 else [f"a{i}" for i in range(len(adapters))]
    modules = [f"{name}={adapter}" for name, adapter in zip(names, adapters, strict=True)]
    at = command.index("--lora-modules")
    command[at + 1 : at + 2] = modules
    command[command.index("--max-loras") + 1] = str(len(adapters))
    process = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


async def spread(targets: list[tuple[str, str]], concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """serving.load's closed loop, request i going to targets[i mod len] as (url, model name)."""
    import httpx

    latencies: list[float] = []
    firsts: list[float] = []
    counter = iter(range(requests))
    chars = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal chars
        for index in counter:
            url, model = targets[index % len(targets)]
            body = {
                "model": model,
                "prompt": serving.PROMPTS[index % len(serving.PROMPTS)],
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
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "firsts": firsts, "seconds": elapsed, "chars": chars}


async def run_setup(
    kind: str, base: Path, adapters: list[Path], args: argparse.Namespace, logs: Path
) -> dict[str, Any]:
    """Start one setup, load its adapters, warm it up, measure `rounds` slices of load, then its memory."""
    import httpx

    count = len(adapters)
    processes: list[tuple[subprocess.Popen[bytes], str]] = []
    ready_path = "/health" if args.engine == "vllm" else "/readyz"
    try:
        if args.engine == "vllm" and kind == "shared":
            processes.append(start_vllm(base, adapters, logs / f"shared-{count}.log"))
        elif args.engine == "vllm":
            for i, adapter in enumerate(adapters):
                processes.append(start_vllm(base, [adapter], logs / f"one-{count}-{i}.log"))
        elif kind == "shared":
            processes.append(start("shared", base, None, count, args.threads, logs / f"shared-{count}.log"))
        else:
            for i, adapter in enumerate(adapters):
                processes.append(start("one", base, adapter, 0, args.threads, logs / f"one-{count}-{i}.log"))
        started = time.monotonic()
        for i, (process, url) in enumerate(processes):
            name = f"shared-{count}.log" if kind == "shared" else f"one-{count}-{i}.log"
            await serving.wait_ready(url, ready_path, process, logs / name, 900)
        if kind == "shared" and args.engine == "vllm":
            url = processes[0][1]
            targets = [(url, serving.MODEL_NAME if count == 1 else f"a{i}") for i in range(count)]
        elif kind == "shared":
            url = processes[0][1]
            async with httpx.AsyncClient(timeout=600) as client:
                for i, adapter in enumerate(adapters):
                    body = {"lora_name": f"a{i}", "lora_path": str(adapter)}
                    (await client.post(url + "/v1/load_lora_adapter", json=body)).raise_for_status()
            targets = [(url, f"a{i}") for i in range(count)]
        else:
            targets = [(url, serving.MODEL_NAME) for _, url in processes]
        ready = round(time.monotonic() - started, 1)
        await spread(targets, 8, 2 * len(targets), args.max_tokens)  # warm-up: every adapter once at least
        runs = [await spread(targets, 8, args.requests, args.max_tokens) for _ in range(args.rounds)]
        mem = [serving.memory(process.pid) for process, _ in processes]
    finally:
        for process, _ in processes:
            process.terminate()
        for process, _ in processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    return {
        "processes": len(processes),
        "ready_seconds": ready,
        "rss_gib": round(sum(m["rss_gib"] for m in mem), 2),
        "pss_gib": round(sum(m["pss_gib"] for m in mem), 2),
        **serving.summarize(runs),
    }


async def bench(base: Path, adapters: list[Path], args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    load_start = serving.loadavg()
    print(f"load average at start {load_start}; adapters {args.counts}; logs in {logs}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for count in args.counts:  # one setup at a time: each has the machine to itself
        for kind in ("separate", "shared") if count in args.separate else ("shared",):
            key = f"{kind}-{count}"
            results[key] = await run_setup(kind, base, adapters[:count], args, logs)
            r = results[key]
            print(
                f"{key:11s} procs {r['processes']:2d}  RSS {r['rss_gib']:5.2f} GiB  PSS {r['pss_gib']:5.2f} GiB  "
                f"{r['rps']:6.2f} req/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                f"(ready in {r['ready_seconds']} s)",
                flush=True,
            )
    one = results.get("separate-1")
    ratios: dict[str, dict[str, float]] = {}
    print("\nN  shared RSS / one model  shared RSS / N models  shared req/s / one model alone  shared / N models req/s"
          "  shared p99 / N models p99")  # fmt: skip
    nan = float("nan")
    for count in args.counts:
        shared, separate = results[f"shared-{count}"], results.get(f"separate-{count}")
        ratio = {
            "rss_vs_one_model": round(shared["rss_gib"] / one["rss_gib"], 2) if one else nan,
            "rss_vs_separate": round(shared["rss_gib"] / separate["rss_gib"], 2) if separate else nan,
            "rps_vs_one_model": round(shared["rps"] / one["rps"], 2) if one else nan,
            "rps_vs_separate": round(shared["rps"] / separate["rps"], 2) if separate else nan,
            "p50_vs_separate": round(shared["p50_ms"] / separate["p50_ms"], 2) if separate else nan,
            "p99_vs_separate": round(shared["p99_ms"] / separate["p99_ms"], 2) if separate else nan,
        }
        ratios[str(count)] = ratio
        print(
            f"{count:<2d} {ratio['rss_vs_one_model']:>22} {ratio['rss_vs_separate']:>21} "
            f"{ratio['rps_vs_one_model']:>31} {ratio['rps_vs_separate']:>23} {ratio['p99_vs_separate']:>26}"
        )
    load_end = serving.loadavg()
    print(f"load average at start {load_start}, at end {load_end}", flush=True)
    return {
        "benchmark": "shared_serving",
        "engine": args.engine,
        "max_tokens": args.max_tokens,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "concurrency": 8,
        # vLLM's CPU pods run unpinned (VLLM_CPU_OMP_THREADS_BIND=nobind): torch's default, one thread a core
        "torch_threads_per_process": args.threads if args.engine == "ours" else os.cpu_count(),
        "cpus": os.cpu_count(),
        "results": results,
        "ratios": ratios,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--engine", choices=["ours", "vllm"], default="ours", help="the server of both setups")
    parser.add_argument("--adapters", default="1,4,8", help="the N to measure, comma-separated (1 is the reference)")
    parser.add_argument(
        "--separate",
        default="1,4,8",
        help="the N for which N one-model servers are run too (each holds a whole model: N x its RSS must fit; "
        "1 is the one-model reference of every ratio)",
    )
    parser.add_argument("--requests", type=int, default=32, help="requests per round at concurrency 8")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every server process")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of SmolLM2-135M-Instruct")
    parser.add_argument("--serve", choices=["shared", "one"], help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-adapters", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.serve:
        serve(args.serve, args.base, args.adapter, args.max_adapters, args.port, args.threads)
        return 0
    try:
        args.counts = sorted({int(n) for n in args.adapters.split(",") if n.strip()})
        args.separate = {int(n) for n in args.separate.split(",") if n.strip()}
    except ValueError:
        parser.error("--adapters and --separate take comma-separated integers, e.g. 1,4,8")
    if not args.counts or not all(1 <= n <= 16 for n in args.counts):
        parser.error("--adapters: each N must be in 1..16")
    if not 8 <= args.requests <= 1000 or not 1 <= args.rounds <= 20 or not 1 <= args.max_tokens <= 256:
        parser.error("--requests must be in 8..1000, --rounds in 1..20, --max-tokens in 1..256")
    with tempfile.TemporaryDirectory(prefix="bench-shared-") as tmp:
        base, adapters = build(Path(tmp), max(args.counts), args.tiny)
        logs = Path(tmp) / "logs"
        logs.mkdir()
        try:
            result = asyncio.run(bench(base, adapters, args, logs))
        except BaseException:
            kept = Path(tempfile.mkdtemp(prefix="bench-shared-logs-"))
            shutil.copytree(logs, kept, dirs_exist_ok=True)
            print(f"server logs kept in {kept}", file=sys.stderr)
            raise
    result["model"] = serving.MODELS["tiny" if args.tiny else "smollm2"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
