"""A burst of kwok-played FineTuneJobs and the checks every chaos fault ends with: no duplicate child, every
status converged. Shared by the chaos tests (tests/integration/test_chaos_*.py) and `bench/chaos.py`.

Each FineTuneJob's pod runs on kwok's fake GPU nodes for `delay` and then succeeds with the trainer's
termination message (hack/kwok/stages.yaml), so a burst exercises the operator and the control plane only.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tests.support.kwok import DELAY, EXIT_CODE, KWOK_NODE_SELECTOR, KWOK_TOLERATION, MESSAGE

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
LABEL_UID = "finetune.dev/job-uid"


def manifest(name: str, delay: str) -> dict[str, Any]:
    message = json.dumps({"code": "Succeeded", "message": "chaos", "metrics": {"test": {"loss": 1.0}}})
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "s3://models/tiny/"},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}, "schema": "text"},
            "resources": {
                "gpus": 1,
                "memory": "1Gi",
                "cpu": "1",
                "tolerations": [KWOK_TOLERATION],
                "nodeSelector": KWOK_NODE_SELECTOR,
            },
            "output": {"uri": f"s3://artifacts/{name}/"},
            "podMetadata": {"annotations": {EXIT_CODE: "0", MESSAGE: message, DELAY: delay}},
        },
    }


def create(custom: Any, namespace: str, count: int, delay: str, prefix: str = "burst") -> list[str]:
    """Create `count` FineTuneJobs (8 at a time, as a GitOps sync does); returns their names."""
    names = [f"{prefix}-{i:04d}" for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda name: custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, manifest(name, delay)
                ),
                names,
            )
        )
    return names


@dataclass(frozen=True)
class Census:
    """What exists in the namespace: FineTuneJobs by phase, training Jobs per FineTuneJob."""

    phases: dict[str, str]
    jobs_per_uid: dict[str, list[str]]
    uids: dict[str, str]

    @property
    def succeeded(self) -> int:
        return sum(1 for phase in self.phases.values() if phase == "Succeeded")

    @property
    def duplicates(self) -> dict[str, list[str]]:
        """FineTuneJobs with more than one training Job of the same run (a Job name is `<name>-r<run>`)."""
        return {uid: names for uid, names in self.jobs_per_uid.items() if len(names) > 1}

    @property
    def orphans(self) -> list[str]:
        """Jobs whose FineTuneJob does not exist."""
        known = set(self.uids.values())
        return sorted(name for uid, names in self.jobs_per_uid.items() if uid not in known for name in names)


def census(custom: Any, batch: Any, namespace: str) -> Census:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    phases = {item["metadata"]["name"]: (item.get("status") or {}).get("phase", "") for item in items}
    uids = {item["metadata"]["name"]: item["metadata"]["uid"] for item in items}
    per_uid: dict[str, list[str]] = defaultdict(list)
    for job in batch.list_namespaced_job(namespace, label_selector=LABEL_UID).items:
        per_uid[job.metadata.labels[LABEL_UID]].append(job.metadata.name)
    return Census(phases, dict(per_uid), uids)


def wait_converged(custom: Any, batch: Any, namespace: str, count: int, timeout: float) -> Census:
    """Poll until every FineTuneJob is Succeeded (API errors while a component restarts are retried)."""
    deadline = time.monotonic() + timeout
    last: Census | None = None
    while time.monotonic() < deadline:
        try:
            last = census(custom, batch, namespace)
        except Exception:  # the API server may be coming back; the deadline still bounds the wait
            time.sleep(0.5)
            continue
        if last.succeeded >= count:
            return last
        time.sleep(0.5)
    phases: dict[str, int] = defaultdict(int)
    for phase in (last.phases if last else {}).values():
        phases[phase or "(none)"] += 1
    raise AssertionError(f"not converged after {timeout:.0f}s: {dict(phases)}")


def count_jobs(batch: Any, namespace: str) -> int:
    return len(batch.list_namespaced_job(namespace, label_selector=LABEL_UID).items)
