"""A pod that cannot start because a Secret the spec names, or a key of it, does not exist: told as the spec field
that names it, the Secret and the fix. Pure.

Why from the pod and not from the Secret: the kubelet resolves each `secretKeyRef` when it creates the container
and, when the Secret or the key is missing, leaves the container waiting with `CreateContainerConfigError` and a
message naming both (`secret "hf-token" not found`, `couldn't find key token in Secret team-a/hf-token`). The
operator reads no Secret's contents (a key's presence is contents), so the pod's waiting message is where it
learns which one is missing; the container-config path of training_state.py reports the raw message, and this
module turns it into the field to fix. The pod keeps waiting (it is not failed, so no attempt of the Job's
backoff is used) and starts by itself once the Secret or key exists; the run's status says `SecretMissing`
meanwhile, as it does for a missing storage.credentialsSecret before any Job is made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from finetune_operator.api.finetunejob import FineTuneJobSpec, hub_sources
from finetune_operator.finetunejob.training_state import CONFIG_PROBLEMS, ErrorInfo, TrainingState

SECRET_MISSING = "SecretMissing"

_NO_SECRET = re.compile(r'secrets? "(?P<name>[^"]+)" not found')
_NO_KEY = re.compile(r"couldn't find key (?P<key>\S+) in Secret (?P<namespace>[^/\s]+)/(?P<name>\S+)")
"""The kubelet's words (pkg/kubelet/kubelet_pods.go, makeEnvironmentVariables)."""


@dataclass(frozen=True)
class SecretRef:
    """A spec field that names a Secret, the keys the pods read from it, and what the Secret must hold."""

    field: str
    name: str
    keys: tuple[str, ...]
    holds: str


def secret_refs(spec: FineTuneJobSpec) -> list[SecretRef]:
    """Every Secret the run's pods read by a required `secretKeyRef` (builders: storage_env, hub_env)."""
    refs = []
    if spec.storage.credentials_secret:
        keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        refs.append(SecretRef("storage.credentialsSecret", spec.storage.credentials_secret, keys, "the S3 keys"))
    for uri_field, source in hub_sources(spec).items():
        if source.token_secret is not None:
            field = uri_field.removesuffix(".uri") + ".tokenSecret"
            token = source.token_secret
            refs.append(SecretRef(field, token.name, (token.key,), "a Hub token with read access to the repo"))
    return refs


def _fields(refs: list[SecretRef]) -> str:
    names = [r.field for r in refs]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def secret_problem(spec: FineTuneJobSpec, namespace: str, message: str) -> str | None:
    """What to tell the user for a container-config message about a Secret the spec names; None for others."""
    refs = secret_refs(spec)
    if (found := _NO_KEY.search(message)) is not None:
        name, key = found["name"], found["key"]
        named = [r for r in refs if r.name == name and key in r.keys]
        if not named:
            return None
        ref = named[0]
        fix = (
            f"set {ref.field}.key to the key that holds the token, or add key {key!r} to the Secret"
            if ref.field.endswith("tokenSecret")
            else f"add key {key!r} ({', '.join(ref.keys)}: {ref.holds}) to the Secret"
        )
        return (
            f"Secret {name!r} in namespace {namespace} has no key {key!r}, which {_fields(named)} "
            f"{'names' if len(named) == 1 else 'name'}: {fix}. The pod waits (no attempt is used) and starts once "
            "the key is there"
        )
    if (found := _NO_SECRET.search(message)) is not None:
        name = found["name"]
        named = [r for r in refs if r.name == name]
        if not named:
            return None
        ref = named[0]
        literals = " ".join(f"--from-literal={k}=..." for k in ref.keys)
        return (
            f"{_fields(named)} {'names' if len(named) == 1 else 'name'} Secret {name!r}, which does not exist in "
            f"namespace {namespace}: create it with {ref.holds} under key{'s' if len(ref.keys) > 1 else ''} "
            f"{', '.join(repr(k) for k in ref.keys)} (kubectl -n {namespace} create secret generic {name} "
            f"{literals}), or correct the name in {_fields(named)}. The pod waits (no attempt is used) and starts "
            "once the Secret exists"
        )
    return None


def absent_message(spec: FineTuneJobSpec, namespace: str, absent: tuple[str, ...]) -> str | None:
    """What to tell the user for Secrets the operator looked up (metadata only) and found absent before the run's
    Job: the same words as for a pod that waits for one, the first absent Secret the spec names."""
    for name in absent:
        if (problem := secret_problem(spec, namespace, f'secret "{name}" not found')) is not None:
            return problem.replace("The pod waits (no attempt is used) and starts", "The run's Job is made")
    return None


def explained(state: TrainingState, spec: FineTuneJobSpec, namespace: str) -> TrainingState:
    """`state` with a container-config error about a Secret the spec names turned into SecretMissing, naming the
    field, the Secret and the fix; any other state as it is."""
    if state.reason not in CONFIG_PROBLEMS:
        return state
    problem = secret_problem(spec, namespace, state.message)
    if problem is None:
        return state
    return replace(
        state, phase="Pending", reason=SECRET_MISSING, message=problem, error=ErrorInfo(SECRET_MISSING, problem)
    )
