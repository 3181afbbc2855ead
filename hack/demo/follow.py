"""Follow a FineTuneJob until it serves (exit 0) or fails (exit 1), printing each change (like get -w).

On failure it prints the error from status and the tail of the trainer pod's log, so the person running the
demo sees why without a second command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

from kubernetes import client, config

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"


def summary(status: dict[str, Any]) -> str:
    progress = status.get("progress") or {}
    metrics = (status.get("metrics") or {}).get("test") or {}
    parts = [f"phase={status.get('phase', '-')}", f"run={status.get('run', '-')}"]
    if progress:
        parts.append(
            f"stage={progress.get('stage', '-')} step={progress.get('step', '-')}/"
            f"{progress.get('totalSteps', '-')} ({progress.get('percent', '-')}%)"
        )
        if progress.get("loss") is not None:
            parts.append(f"loss={progress['loss']:.3f}")
        if progress.get("validationLoss") is not None:  # evaluation.intervalSteps: the best one is kept
            best = progress.get("bestValidationLoss")
            parts.append(f"val_loss={progress['validationLoss']:.3f}" + (f" (best {best:.3f})" if best else ""))
    if metrics:
        parts.append(
            "test=" + ",".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items()) if isinstance(v, int | float))
        )
    gate = status.get("gate") or {}
    if "passed" in gate:
        parts.append(f"gate={'passed' if gate['passed'] else 'FAILED'}")
    endpoint = status.get("endpoint") or {}
    if endpoint.get("url"):
        parts.append(f"endpoint={endpoint['url']}")
    return "  ".join(parts)


def ready(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    config.load_kube_config()
    api = client.CustomObjectsApi()
    deadline = time.monotonic() + args.timeout
    last = ""
    while time.monotonic() < deadline:
        ftj = api.get_namespaced_custom_object(GROUP, VERSION, args.namespace, PLURAL, args.name)
        status = ftj.get("status") or {}
        line = summary(status)
        if line != last:
            print(time.strftime("%H:%M:%S"), line, flush=True)
            last = line
        if status.get("phase") == "Succeeded" or (status.get("phase") == "Serving" and ready(status)):
            return 0
        if status.get("phase") == "Failed":
            print("FAILED:", status.get("error"), file=sys.stderr)
            subprocess.run(
                [
                    "kubectl",
                    "-n",
                    args.namespace,
                    "logs",
                    "--tail",
                    "40",
                    "-l",
                    f"finetune.dev/job={args.name}",
                    "--all-containers",
                ],
                check=False,
            )
            return 1
        time.sleep(2)
    print(f"timed out after {args.timeout:.0f}s; last status: {last}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
