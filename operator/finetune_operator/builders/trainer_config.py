"""The trainer config (docs/trainer-contract.md section 1) and the ConfigMap that carries it.

The config mirrors the FineTuneJob spec's training sections field for field (camelCase) and adds `job`,
`output.runUri` and `distributed.processesPerWorker`; the trainer validates it with its own models and
rejects unknown fields, so nothing else may be added here without changing both sides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.api.labels import Names
from finetune_operator.api.objects import Manifest, Owner
from finetune_operator.builders.common import metadata

SPLITS = ("train", "validation", "test")
CONFIG_KEY = "config.json"
CONFIG_DIR = "/etc/finetune"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"


def trainer_config(
    spec: FineTuneJobSpec, owner: Owner, run: int, commits: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The TrainerConfig document of run `run`. `commits`: the commit each hf:// source was resolved to by a
    passed validation this run reuses (status.validation.sources), pinned as its revision."""
    wire = spec.wire()
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "TrainerConfig",
        "job": {"namespace": owner.namespace, "name": owner.name, "uid": owner.uid, "run": run},
        # an unset adapter is left out: the config of a job without one reads as before it existed
        "baseModel": {
            key: value
            for key, value in _source(wire["baseModel"], "baseModel.uri", commits or {}).items()
            if key != "adapter" or value
        },
        "dataset": _dataset(wire["dataset"], commits or {}),
        "method": _method(wire["method"]),
        "hyperparameters": wire["hyperparameters"],
        "checkpointing": wire["checkpointing"],
        "evaluation": _evaluation(spec),
        "distributed": {
            "workers": spec.distributed.workers,
            "processesPerWorker": spec.processes_per_worker,
            "sharding": spec.distributed.sharding,
        },
        **_tracking(spec, owner),
        "output": {"uri": spec.output.uri, "runUri": spec.output.run_uri(run)},
    }


def _source(section: dict[str, Any], name: str, commits: Mapping[str, str]) -> dict[str, Any]:
    """A source without its tokenSecret (the validation pod gets the token as env, builders/training.py) and
    without an unset revision; a recorded commit replaces the revision."""
    out = {k: v for k, v in section.items() if k != "tokenSecret" and not (k == "revision" and v is None)}
    if name in commits:
        out["revision"] = commits[name]
    return out


def _dataset(dataset: dict[str, Any], commits: Mapping[str, str]) -> dict[str, Any]:
    return {
        key: _source(value, f"dataset.{key}.uri", commits) if key in SPLITS and value is not None else value
        for key, value in dataset.items()
    }


def _method(method: dict[str, Any]) -> dict[str, Any]:
    """The method section; `objective: sft` and an unset `dpo` or `simpo` are left out, so the config of a job
    that sets none of them reads as before preference tuning existed (the trainer's defaults are the same)."""
    return {
        key: value
        for key, value in method.items()
        if not (key == "objective" and value == "sft") and not (key in ("dpo", "simpo") and value is None)
    }


def _tracking(spec: FineTuneJobSpec, owner: Owner) -> dict[str, Any]:
    """`tracking.mlflow` without its credentialsSecret (the pod gets the Secret's keys as env); absent when
    tracking is off. An empty experiment is `<namespace>/<name>`."""
    mlflow = spec.tracking.mlflow
    if mlflow is None:
        return {}
    experiment = mlflow.experiment or f"{owner.namespace}/{owner.name}"
    return {"tracking": {"mlflow": {"trackingUri": mlflow.tracking_uri, "experiment": experiment}}}


def _evaluation(spec: FineTuneJobSpec) -> dict[str, Any]:
    """The evaluation section the trainer acts on (the gate is the operator's); unset fields are left out, so
    the config of a job that sets none of them reads as before they existed."""
    wire = spec.evaluation.wire()
    section: dict[str, Any] = {"compareBaseModel": spec.evaluation.compare_base_model}
    section.update({k: wire[k] for k in ("intervalSteps", "earlyStopping", "generation") if wire[k] is not None})
    return section


def trainer_config_map(
    spec: FineTuneJobSpec, owner: Owner, run: int, commits: Mapping[str, str] | None = None
) -> Manifest:
    """ConfigMap `<job>-config` with key config.json, mounted read-only by the training pods."""
    names = Names.of(owner.name)
    document = trainer_config(spec, owner, run, commits)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, names.trainer_config(run), "trainer-config", run),
        "immutable": True,
        "data": {CONFIG_KEY: json.dumps(document, indent=2, sort_keys=True) + "\n"},
    }
