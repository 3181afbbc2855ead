"""A sweep's trials: each one's parameter values and its FineTuneJob manifest, pure and deterministic.

Why deterministic: a restarted operator must recompute exactly the same trials. Names are `<sweep>-t<index>`
and values derive from (seed, index, path) by hashing, so there is no random generator state to keep.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any

from finetune_operator import GROUP, VERSION
from finetune_operator.api.finetunesweep import (
    ANNOTATION_PARAMETERS,
    LABEL_SWEEP,
    LABEL_SWEEP_UID,
    LABEL_TRIAL,
    SWEEP_KIND,
    ParameterSpec,
    SweepSpec,
    grid_points,
    parameter_number,
    range_point,
)
from finetune_operator.api.labels import label_value
from finetune_operator.api.objects import Manifest, Owner


def uniform(seed: int, index: int, path: str) -> float:
    """A number in [0, 1) fixed by (seed, trial index, parameter path): no generator state to restore."""
    digest = hashlib.sha256(f"{seed}/{index}/{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _random_value(parameter: ParameterSpec, seed: int, index: int) -> float | int:
    u = uniform(seed, index, parameter.path)
    if parameter.values is not None:
        return parameter_number(parameter, parameter.values[int(u * len(parameter.values))])
    spec = parameter.range
    assert spec is not None
    if parameter.is_int():
        low, high = math.ceil(spec.min), math.floor(spec.max)
        if spec.scale == "log":  # whole numbers, evenly spread on the log scale
            return min(high, max(low, round(range_point(spec, u))))
        return low + min(int(u * (high - low + 1)), high - low)
    return parameter_number(parameter, range_point(spec, u))


def trial_parameters(spec: SweepSpec, index: int) -> dict[str, float | int]:
    """The values trial `index` runs with: the index-th grid point (last parameter fastest) or a random draw."""
    if spec.algorithm == "random":
        return {p.path: _random_value(p, spec.seed, index) for p in spec.parameters}
    values: dict[str, float | int] = {}
    rest = index
    for parameter in reversed(spec.parameters):
        points = grid_points(parameter)
        values[parameter.path] = points[rest % len(points)]
        rest //= len(points)
    return {p.path: values[p.path] for p in spec.parameters}


# ---- trials ----------------------------------------------------------------------------------------------


def trial_name(sweep: str, index: int) -> str:
    return f"{sweep}-t{index}"


def trial_spec(template: dict[str, Any], values: dict[str, float | int], output: str) -> dict[str, Any]:
    """The template with the trial's values, serving off, no gate (it reads test metrics: the winner's alone
    are gated, at the end) and an output folder of its own."""
    out = copy.deepcopy(template)
    for path, value in values.items():
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    out.setdefault("serving", {})["enabled"] = False
    out.setdefault("evaluation", {})["gate"] = []
    out.setdefault("output", {})["uri"] = output
    out["suspend"] = False
    return out


def trial_output(template: dict[str, Any], owner: Owner, index: int) -> str:
    """<template output>sweep-<uid8>/t<index>/: a re-created sweep of the same name never meets the run folders
    of the old one's trials (the trainer refuses a folder another FineTuneJob wrote)."""
    base = str((template.get("output") or {}).get("uri", ""))
    base = base if base.endswith("/") else base + "/"
    return f"{base}sweep-{owner.uid[:8]}/t{index}/"


def trial_manifest(spec: SweepSpec, owner: Owner, index: int) -> Manifest:
    values = trial_parameters(spec, index)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {
            "name": trial_name(owner.name, index),
            "namespace": owner.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "finetune-operator",
                LABEL_SWEEP: label_value(owner.name),
                LABEL_SWEEP_UID: owner.uid,
                LABEL_TRIAL: str(index),
            },
            "annotations": {ANNOTATION_PARAMETERS: json.dumps(values, sort_keys=True)},
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": SWEEP_KIND,
                    "name": owner.name,
                    "uid": owner.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": trial_spec(spec.template, values, trial_output(spec.template, owner, index)),
    }
