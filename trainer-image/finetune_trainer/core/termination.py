"""The termination message: one JSON line the operator reads from the pod status after the trainer exits.

Why bounded: Kubernetes keeps at most 4096 bytes of `/dev/termination-log`; a truncated JSON line would
be unreadable, so `termination_line` shortens the message text (never the structure) to fit.
`FTO_TERMINATION_LOG` overrides the path for tests and local runs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LIMIT = 4096
DEFAULT_PATH = "/dev/termination-log"


def termination_line(
    code: str,
    message: str,
    run: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    tracking: Mapping[str, Any] | None = None,
) -> str:
    """`{"code", "message", "run"?, "metrics"?, "tracking"?}` as one JSON line of at most 4096 bytes."""

    def render(text: str, with_metrics: bool) -> str:
        body: dict[str, Any] = {"code": code, "message": text}
        if run is not None:
            body["run"] = run
        if metrics is not None and with_metrics:
            body["metrics"] = metrics
        if tracking:
            body["tracking"] = tracking
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))

    line = render(message, True)
    if len(line.encode()) <= LIMIT:
        return line
    with_metrics = len(render("", True).encode()) < LIMIT // 2
    overhead = len(render("", with_metrics).encode()) + 16
    text = message.encode()[: max(0, LIMIT - overhead - 3)].decode(errors="ignore") + "..."
    while len(render(text, with_metrics).encode()) > LIMIT:  # escaping can grow the text
        text = text[: int(len(text) * 0.9)] + "..."
    return render(text, with_metrics)


def write_termination(line: str) -> None:
    """Write the line to the termination-log path; failure to write is logged, not fatal."""
    path = Path(os.environ.get("FTO_TERMINATION_LOG", DEFAULT_PATH))
    try:
        path.write_text(line + "\n")
    except OSError as error:
        log.warning("cannot write the termination message to %s: %s", path, error)
    print(f"termination: {line}", flush=True)
