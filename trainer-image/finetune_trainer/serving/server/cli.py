"""The server's entry point: `python -m finetune_trainer serve --config serve.json --port 8000`.

Why it is this thin: everything testable lives in the app factory; this only reads serve.json and the
environment, starts uvicorn, and turns a failed model load into a process exit with the contract's
exit code and a termination message (as the trainer does), so `kubectl describe pod` shows why the
server never became ready instead of a pod failing its readiness probe forever.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from finetune_trainer.core.errors import TrainerError, as_trainer_error

log = logging.getLogger("finetune_trainer.serving.server")

DEFAULT_CONFIG = Path("/etc/finetune/serve.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_trainer serve", description="Serve a fine-tuned model over an OpenAI-compatible API."
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="serve.json (default: %(default)s)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("FTO_LOG_LEVEL", "info").lower(),
        choices=["debug", "info", "warning", "error"],
    )
    args = list(argv) if argv is not None else None
    if args and args[0] == "serve":
        args = args[1:]
    return parser.parse_args(args)


def write_termination_message(code: str, message: str) -> None:
    """One JSON line for Kubernetes' termination message, as the trainer writes it."""
    from finetune_trainer.core.termination import termination_line, write_termination

    write_termination(termination_line(code, message))


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM (exit 0) or a failed model load (exit 42 / 1)."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from finetune_trainer.core.cpus import configure_torch
    from finetune_trainer.serving.server.app import create_app
    from finetune_trainer.serving.server.config import ServeSettings, load_serve_config

    try:
        settings = ServeSettings.from_env(load_serve_config(args.config))
        configure_torch()  # before the model loads: torch must not size its pool from the host's cores
    except TrainerError as error:
        log.error("%s: %s", error.code, error.message)
        write_termination_message(error.code, error.message)
        return error.exit_code
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=30,
            access_log=False,
        )
    )
    failures: list[BaseException] = []

    def on_load_failure(error: BaseException) -> None:
        failures.append(error)
        server.should_exit = True

    app.state.on_load_failure = on_load_failure
    # uvicorn drains on SIGTERM, then re-raises the signal under the handler it found at start: make that
    # handler a no-op so a drained server exits 0 instead of dying by the signal
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failures:
        failure = as_trainer_error(failures[0])
        write_termination_message(failure.code, failure.message)
        return failure.exit_code
    return 0
