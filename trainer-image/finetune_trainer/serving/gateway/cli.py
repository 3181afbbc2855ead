"""`python -m finetune_trainer gateway --upstream http://127.0.0.1:8080 --port 8000`: the gateway's entry point.

Why flags and not a config file: the operator renders the gateway's whole configuration into its container's
arguments (builders/containers.py), each flag named and checked here; the key comes from the environment
(`FTO_API_KEY`, from the server's Secret), never from a flag. uvicorn runs as our server runs it
(`serving.server.cli.server_config`: no proxy headers, bounded request headers).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from finetune_trainer.serving.gateway.limits import TokenLimits

log = logging.getLogger("finetune_trainer.serving.gateway")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return int(text)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_trainer gateway",
        description="Guard and forward the OpenAI inference routes to a vLLM server listening on loopback.",
    )
    parser.add_argument("--upstream", required=True, help="vLLM's loopback URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--adapters-file", type=Path, default=None, help="a shared server's copy of adapters.json")
    parser.add_argument("--base-model", action="append", default=[], help="a name no tenant key reaches (repeatable)")
    parser.add_argument("--max-body-bytes", type=_positive, default=1 << 20, help="413 beyond (default 1 MiB)")
    parser.add_argument("--max-requests", type=_positive, default=64, help="requests in progress; 429 beyond")
    parser.add_argument("--default-max-tokens", type=_positive, default=256, help="a chat request's default")
    parser.add_argument("--max-tokens-limit", type=_positive, default=4096, help="the most any request may ask")
    parser.add_argument("--log-level", default=os.environ.get("FTO_LOG_LEVEL", "info").lower())
    args = parser.parse_args(argv)
    if not args.upstream.startswith(("http://127.0.0.1:", "http://[::1]:", "http://localhost:")):
        parser.error(f"--upstream must be a loopback http:// URL (vLLM listens on loopback only), not {args.upstream}")
    if args.default_max_tokens > args.max_tokens_limit:
        parser.error("--default-max-tokens is larger than --max-tokens-limit")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from finetune_trainer.serving.gateway.app import GatewaySettings, create_app
    from finetune_trainer.serving.server.cli import listen, server_config

    settings = GatewaySettings(
        upstream=args.upstream.rstrip("/"),
        api_key=os.environ.get("FTO_API_KEY") or None,
        adapters_file=args.adapters_file,
        reserved=frozenset(args.base_model),
        max_body_bytes=args.max_body_bytes,
        max_requests=args.max_requests,
        limits=TokenLimits(default_max_tokens=args.default_max_tokens, max_tokens_limit=args.max_tokens_limit),
    )
    if settings.api_key is None:
        log.warning("no FTO_API_KEY: every client reaches every model (the manifest opted out of a key)")
    server = uvicorn.Server(server_config(create_app(settings), args.log_level))
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # as `serve`: a drained exit is 0
    try:
        server.run(sockets=[listen(args.host, args.port)])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
