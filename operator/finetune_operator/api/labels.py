"""Names and labels of the children of one FineTuneJob, valid for any legal FineTuneJob name.

Why: a FineTuneJob name is a DNS subdomain (up to 253 characters, dots allowed, may start with a digit),
but a Job's pods take the Job name as hostname and label value (63 characters), a Service name must be a
DNS-1035 label, and an Indexed Job's pod hostname is `<job>-<index>`. So every child name starts from one
`base` of at most 40 DNS-1035 characters: the FineTuneJob name itself when it fits, else a sanitised prefix
plus a hash of the full name (so two long names never collide).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

BASE_MAX = 40
LABEL_MAX = 63

LABEL_JOB = "finetune.dev/job"
LABEL_UID = "finetune.dev/job-uid"
LABEL_RUN = "finetune.dev/run"
LABEL_COMPONENT = "finetune.dev/component"
ANNOTATION_SPEC_HASH = "finetune.dev/spec-hash"
ANNOTATION_TRAINING_HASH = "finetune.dev/training-spec-hash"
ANNOTATION_PLACEMENT_HASH = "finetune.dev/placement-hash"
ANNOTATION_RETRY = "finetune.dev/retry"  # on a FineTuneJob, set by its user: a new value retries a failed run
ANNOTATION_FULL_NAME = "finetune.dev/finetunejob"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MANAGED_BY = "finetune-operator"
TRAINER_CONTAINER = "trainer"  # the training pod's container: the builder names it, the status reads it
COMPONENT_TRAINER = "trainer"  # the training Job, its pods, config and headless Service
COMPONENT_VALIDATOR = "validator"  # the CPU-only pod (under Kueue: Job) that checks a run's data before any GPU
COMPONENT_PROGRESS = "trainer-progress"  # the ConfigMap the trainer reports its progress in

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _digest(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def base_name(name: str) -> str:
    """A DNS-1035 label of at most 40 characters that stands for the FineTuneJob `name`."""
    if len(name) <= BASE_MAX and _DNS1035.match(name):
        return name
    cleaned = re.sub(r"[^a-z0-9-]", "-", name.lower())
    if not cleaned[:1].isalpha():
        cleaned = "f-" + cleaned
    prefix = cleaned[: BASE_MAX - 9].strip("-")
    return f"{prefix}-{_digest(name)}"


def label_value(value: str) -> str:
    """`value` when it is a valid label value, else a truncated prefix plus a hash."""
    if len(value) <= LABEL_MAX and _LABEL_VALUE.match(value):
        return value
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[: LABEL_MAX - 9].strip("-_.")
    return f"{prefix}-{_digest(value)}"


@dataclass(frozen=True)
class Names:
    """Every child name of one FineTuneJob."""

    name: str
    base: str

    @classmethod
    def of(cls, name: str) -> Names:
        return cls(name=name, base=base_name(name))

    def job(self, run: int) -> str:
        return f"{self.base}-r{run}"

    def validation_job(self, run: int) -> str:
        return f"{self.job(run)}-check"

    def validation_pod(self, run: int, attempt: int) -> str:
        """Attempt `attempt` of the data check's bare pod (the Job's pods had `<job>-<random>` names)."""
        return f"{self.validation_job(run)}-{attempt}"

    def trainer_config(self, run: int) -> str:
        return f"{self.job(run)}-config"

    def workers_service(self, run: int) -> str:
        return f"{self.job(run)}-workers"

    @property
    def trainer_account(self) -> str:
        return f"{self.base}-trainer"

    @property
    def progress(self) -> str:
        """The ConfigMap the trainer reports its progress in (the one object its Role may patch)."""
        return f"{self.base}-progress"

    @property
    def serving(self) -> str:
        """Deployment, Service and PodDisruptionBudget of the endpoint."""
        return self.base

    @property
    def serving_config(self) -> str:
        return f"{self.base}-serve"

    @property
    def api_key(self) -> str:
        """The Secret of the endpoint's generated key (serving.apiKeySecret empty, no allowUnauthenticated)."""
        return f"{self.base}-api-key"


def selector_labels(name: str, uid: str) -> dict[str, str]:
    """Labels that find everything of one FineTuneJob (the uid tells apart a deleted and re-created one)."""
    return {LABEL_JOB: label_value(name), LABEL_UID: uid}


def child_labels(name: str, uid: str, component: str, run: int | None = None) -> dict[str, str]:
    """All labels of one child: managed-by, the FineTuneJob, the component and (for training) the run."""
    labels = {
        "app.kubernetes.io/name": "finetunejob",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/instance": label_value(name),
        **selector_labels(name, uid),
        LABEL_COMPONENT: component,
    }
    if run is not None:
        labels[LABEL_RUN] = str(run)
    return labels
