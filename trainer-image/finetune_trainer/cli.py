"""The command line: `python -m finetune_trainer train --config FILE`, `... validate`, `... fetch`, `... serve`,
`... adapters`, `... gateway`.

Why the exit mapping lives here: the contract (docs/trainer-contract.md section 3) is about what the
process leaves behind: one termination-message line and an exit code (0, 42 user error, 75 preempted,
1 anything else). Every path out of `train` goes through `run_train`, so no exception can leave without
a termination message, and only rank 0 writes it (all ranks exit with the same code).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune_trainer.core.errors import Preempted, TrainerError, as_trainer_error
from finetune_trainer.core.termination import DEFAULT_PATH, termination_line, write_termination
from finetune_trainer.memory.check import Placement
from finetune_trainer.training.launch import launch, needs_launch


def configure_logging() -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.basicConfig(
        level=os.environ.get("FTO_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "filelock", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _peek(config_path: Path) -> dict[str, Any] | None:
    """The decoded config if it is readable JSON (validation comes later, with full error reporting)."""
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _termination_empty() -> bool:
    path = Path(os.environ.get("FTO_TERMINATION_LOG", DEFAULT_PATH))
    try:
        return not path.read_text().strip()
    except OSError:
        return True


def run_train(config_path: Path) -> int:
    """Run one training attempt; write the termination message; return the exit code."""
    from finetune_trainer.core import distributed
    from finetune_trainer.training.callbacks import SignalStop, StopRequested

    raw = _peek(config_path)
    if raw is not None and needs_launch(raw, dict(os.environ)):
        return launch(config_path, raw)
    stop = SignalStop()
    stop.install()
    run: int | None = None
    try:
        from finetune_trainer.config import load_config

        cfg = load_config(config_path)
        run = cfg.job.run
        from finetune_trainer.core.cpus import configure_torch

        configure_torch()  # the container's CPU budget, not the host's core count (cpus.py says why)
        from finetune_trainer.training.train import main

        outcome = main(cfg, stop)
        message = f"trained {outcome.steps} steps"
        line = termination_line("Succeeded", message, run, outcome.metrics, outcome.tracking)
        code = 0
    except StopRequested:
        preempted = Preempted(
            "stopped by SIGTERM outside the training loop; the next attempt resumes from the newest complete checkpoint"
        )
        line, code = termination_line(preempted.code, preempted.message, run), preempted.exit_code
    except Exception as crash:  # a TrainerError says its outcome; everything unclassified is retryable
        if not isinstance(crash, TrainerError):
            traceback.print_exc()
        failure = as_trainer_error(crash)
        line, code = termination_line(failure.code, failure.message, run), failure.exit_code
    if distributed.is_main() or (code != 0 and _termination_empty()):
        write_termination(line)  # rank 0 speaks for the job; another rank only when it failed first
    logging.getLogger(__name__).info("exit %d", code)
    return code


def run_validate(config_path: Path, output: Path | None, placement: Placement) -> int:
    """Check the inputs of a config without training (finetune_trainer.training.validate); same exit codes as train.

    The summary goes to stdout (one JSON document), to `output` when given, and into the termination
    message (`summary`); a user error is reported exactly as `train` reports it. `placement` is where the
    training pods will run: the memory plan is checked against it.
    """
    run: int | None = None
    try:
        from finetune_trainer.config import load_config
        from finetune_trainer.core.storage import Storage
        from finetune_trainer.training.train import work_dir
        from finetune_trainer.training.validate import success_line, summarize

        cfg = load_config(config_path)
        run = cfg.job.run
        summary = summarize(cfg, Storage(), work_dir() / "validate", placement)
        document = json.dumps(summary, indent=2)
        print(document, flush=True)
        if output is not None:
            output.write_text(document + "\n")
        line, code = success_line(summary, run), 0
    except Exception as crash:
        if not isinstance(crash, TrainerError):
            traceback.print_exc()
        failure = as_trainer_error(crash)
        line, code = termination_line(failure.code, failure.message, run), failure.exit_code
    write_termination(line)
    logging.getLogger(__name__).info("exit %d", code)
    return code


def run_fetch(uris: Sequence[str], dests: Sequence[str]) -> int:
    """Copy object-storage folders to local disk (finetune_trainer.core.fetch); same exit codes as train."""
    try:
        from finetune_trainer.core.fetch import copies, fetch, summary
        from finetune_trainer.core.storage import Storage

        line, code = termination_line("Succeeded", summary(fetch(copies(uris, dests), Storage()))), 0
    except Exception as crash:
        if not isinstance(crash, TrainerError):
            traceback.print_exc()
        failure = as_trainer_error(crash)
        line, code = termination_line(failure.code, failure.message), failure.exit_code
    write_termination(line)
    logging.getLogger(__name__).info("exit %d", code)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["serve"]:  # the server owns its own arguments
        from finetune_trainer.serving.server.cli import main as serve_main

        return int(serve_main(arguments[1:]) or 0)
    if arguments[:1] == ["adapters"]:  # a shared server's sidecar (finetune_trainer.serving.adapters): its own args
        from finetune_trainer.serving.adapters.cli import main as adapters_main

        return adapters_main(arguments[1:])
    if arguments[:1] == ["gateway"]:  # the gateway in front of vLLM (finetune_trainer.serving.gateway): its own args
        from finetune_trainer.serving.gateway.cli import main as gateway_main

        return gateway_main(arguments[1:])
    parser = argparse.ArgumentParser(prog="python -m finetune_trainer")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run one training attempt from a trainer config")
    train.add_argument("--config", type=Path, default=Path("/etc/finetune/config.json"))
    check = commands.add_parser(
        "validate", help="check a config's data and tokenizer without training (CPU only, no model weights)"
    )
    check.add_argument("--config", type=Path, default=Path("/etc/finetune/config.json"))
    check.add_argument("--output", type=Path, default=None, help="also write the JSON summary to this file")
    check.add_argument("--gpus", type=int, default=0, help="GPUs per training pod (the memory plan's budget)")
    check.add_argument("--gpu-product", default="", help="the GPU type the training pods' node selector names")
    check.add_argument("--memory-limit", default="", help="the training pods' memory limit, e.g. 16Gi")
    check.add_argument(
        "--disk-limit", default="", help="the training pods' local disk (resources.ephemeralStorage), e.g. 100Gi"
    )
    check.add_argument(
        "--gpu-memory",
        action="append",
        default=[],
        help="NAME=QUANTITY: replace or add a GPU table entry, e.g. A100-MIG-3g.20gb=20Gi (repeatable)",
    )
    copy = commands.add_parser(
        "fetch", help="copy folders from object storage to local disk (a vLLM pod's init container)"
    )
    copy.add_argument("--uri", action="append", default=[], help="s3://bucket/prefix/ to copy (repeatable)")
    copy.add_argument("--dest", action="append", default=[], help="local folder for the --uri at the same place")
    commands.add_parser("serve", help="serve a trained model (arguments: see finetune_trainer.serving.server.cli)")
    commands.add_parser(
        "adapters", help="a shared server's adapter sidecar (see finetune_trainer.serving.adapters.cli)"
    )
    commands.add_parser("gateway", help="the gateway in front of vLLM (see finetune_trainer.serving.gateway.cli)")
    args = parser.parse_args(arguments)
    configure_logging()
    if args.command == "fetch":
        return run_fetch(args.uri, args.dest)
    if args.command == "validate":
        placement = Placement(
            gpus=args.gpus,
            gpu_product=args.gpu_product,
            memory_limit=args.memory_limit,
            gpu_memory=tuple(args.gpu_memory),
            disk_limit=args.disk_limit,
        )
        return run_validate(args.config, args.output, placement)
    return run_train(args.config)
