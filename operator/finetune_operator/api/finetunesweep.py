"""The typed FineTuneSweep spec, its labels and annotations, and the one table of what a sweep may vary.

Why apart from the sweep's planner: the spec is the contract (the CRD is generated from `PARAMETERS`, tests compare
the two), read by the planner, the trials' builder, the CRD generator and the kopf glue; none of them should have
to import the others to know what a sweep is. The search space's size (`total_trials`, `grid_points`) is a
property of the spec alone, so it lives here too.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import ValidationError, field_validator, model_validator

from finetune_operator.api.base import SpecModel, without_unknown_fields
from finetune_operator.api.finetunejob import parse_spec

SWEEP_KIND = "FineTuneSweep"
SWEEP_PLURAL = "finetunesweeps"

LABEL_SWEEP = "finetune.dev/sweep"
LABEL_SWEEP_UID = "finetune.dev/sweep-uid"
LABEL_TRIAL = "finetune.dev/trial"
ANNOTATION_PARAMETERS = "finetune.dev/trial-parameters"
ANNOTATION_STOPPED = "finetune.dev/stopped-by-sweep"  # on a trial the sweep suspended: why
ANNOTATION_PUBLISHED = "finetune.dev/published-by-sweep"  # on the winner once promoted: the sweep's name

MAX_TRIALS = 1000
"""The most trials one sweep runs (the CRD's maxTrials maximum; a larger grid needs maxTrials). Why a ceiling: every
trial is one entry of status.trials, and the whole status is one object under etcd's request limit (1.5 MiB by
default); at 1,000 trials the largest status the planner can write stays near 1 MB (tests/unit/operator/
test_finetunesweep_scale.py), and a real API server stores it (tests/integration/test_sweeps.py)."""

PARAMETERS: dict[str, Literal["int", "float"]] = {
    "hyperparameters.learningRate": "float",
    "hyperparameters.epochs": "float",
    "hyperparameters.batchSize": "int",
    "hyperparameters.gradientAccumulationSteps": "int",
    "hyperparameters.warmupRatio": "float",
    "hyperparameters.weightDecay": "float",
    "hyperparameters.maxSteps": "int",
    "method.lora.rank": "int",
    "method.lora.alpha": "int",
    "method.lora.dropout": "float",
}
"""The one table of what a sweep may vary and each field's number type; the CRD's enum and its int rule are
generated from it (hack/gen_sweep_crd.py) and a test checks every path exists in the FineTuneJob spec."""


class RangeSpec(SpecModel):
    min: float
    max: float
    scale: Literal["linear", "log"] = "linear"
    type: Literal["int", "float"] = "float"
    count: int | None = None  # grid points (grid search only)

    @model_validator(mode="after")
    def _bounds(self) -> RangeSpec:
        if self.min > self.max:
            raise ValueError(f"range.min {self.min} is above range.max {self.max}")
        if self.scale == "log" and self.min <= 0:
            raise ValueError("a log range needs range.min > 0")
        return self


class ParameterSpec(SpecModel):
    path: str
    values: list[float] | None = None
    range: RangeSpec | None = None

    @field_validator("path")
    @classmethod
    def _known(cls, path: str) -> str:
        if path not in PARAMETERS:
            raise ValueError(f"{path!r} is not a sweepable field; one of {', '.join(PARAMETERS)}")
        return path

    @model_validator(mode="after")
    def _one_source(self) -> ParameterSpec:
        if (self.values is None) == (self.range is None):
            raise ValueError(f"parameter {self.path}: give exactly one of values and range")
        if PARAMETERS[self.path] == "int":
            if self.values is not None and any(v != int(v) for v in self.values):
                raise ValueError(f"parameter {self.path}: takes whole numbers")
            if self.range is not None and self.range.type != "int":
                raise ValueError(f"parameter {self.path}: takes whole numbers (range.type: int)")
        return self

    def is_int(self) -> bool:
        return PARAMETERS[self.path] == "int"


class ObjectiveSpec(SpecModel):
    metric: str = "validation_loss"
    goal: Literal["minimize", "maximize"] = "minimize"

    @field_validator("metric")
    @classmethod
    def _validation_only(cls, metric: str) -> str:
        if metric.startswith("test_"):
            raise ValueError(
                f"{metric}: a test metric cannot be the objective; the test split stays a fair final check of the "
                "winner. Use a validation metric such as validation_loss"
            )
        if not metric.startswith("validation_"):
            raise ValueError(f"{metric}: the objective must be a validation metric (validation_<name>)")
        return metric

    def better(self, a: float, b: float) -> bool:
        return a < b if self.goal == "minimize" else a > b


class TrialStoppingSpec(SpecModel):
    rule: Literal["median"] = "median"
    after_steps: int
    min_trials: int = 2


class SweepSpec(SpecModel):
    template: dict[str, Any]
    parameters: list[ParameterSpec]
    algorithm: Literal["grid", "random"] = "grid"
    seed: int = 0
    max_trials: int | None = None
    parallelism: int = 2
    objective: ObjectiveSpec = ObjectiveSpec()
    early_stopping: TrialStoppingSpec | None = None
    publish_winner: bool = False

    @model_validator(mode="after")
    def _coherent(self) -> SweepSpec:
        parse_spec(self.template)  # the template must be a valid FineTuneJob spec
        if self.algorithm == "grid":
            for parameter in self.parameters:
                if parameter.range is not None and not parameter.range.count:
                    raise ValueError(f"parameter {parameter.path}: a grid needs range.count (or values)")
        elif self.max_trials is None:
            raise ValueError("random search needs maxTrials")
        if self.max_trials is not None and self.max_trials > MAX_TRIALS:
            raise ValueError(f"spec.maxTrials: {self.max_trials} is more than the {MAX_TRIALS} trials a sweep may run")
        if self.algorithm == "grid" and self.max_trials is None:
            size = math.prod(len(grid_points(p)) for p in self.parameters)
            if size > MAX_TRIALS:
                raise ValueError(
                    f"spec.parameters: the grid has {size} combinations, more than the {MAX_TRIALS} trials a sweep "
                    "may run; set spec.maxTrials to run its first ones (in order, last parameter fastest), or give "
                    "fewer values"
                )
        if len({p.path for p in self.parameters}) != len(self.parameters):
            raise ValueError("each parameter path may appear once")
        return self

    @property
    def total_trials(self) -> int:
        if self.algorithm == "random":
            return int(self.max_trials or 0)
        size = math.prod(len(grid_points(p)) for p in self.parameters)
        return min(size, self.max_trials) if self.max_trials else size


def parse_sweep_spec(raw: dict[str, Any]) -> SweepSpec:
    """Parse the `spec` of a FineTuneSweep body (raises pydantic.ValidationError)."""
    return SweepSpec.model_validate(raw)


def sweep_without_unknown_fields(raw: dict[str, Any], error: Any) -> tuple[dict[str, Any], list[str]] | None:
    """`raw` (a sweep's spec) without the fields this operator does not know, in the sweep's own fields and in its
    template (a FineTuneJob spec), with their `spec.<path>` names; None when anything else is refused too.

    Why apart from api.base.without_unknown_fields: the template is checked by parsing it as a FineTuneJob spec
    inside the sweep's validator, so pydantic reports its unknown fields as one value error of the whole sweep,
    not by path; the template is read on its own first. A newer FineTuneJob CRD's defaulted field reaches the
    template too (hack/gen_sweep_crd.py copies its schema), and the trials are made from the template read here.
    `error` (the sweep's refusal) is not needed: the parts are parsed again, each for its own refusals.
    """
    del error
    stripped, names = dict(raw), []
    template = raw.get("template")
    if isinstance(template, dict):
        try:
            parse_spec(template)
        except ValidationError as refused:
            found = without_unknown_fields(template, refused)
            if found is None:
                return None
            stripped["template"] = found[0]
            names += ["spec.template." + name.removeprefix("spec.") for name in found[1]]
    try:
        parse_sweep_spec(stripped)
    except ValidationError as refused:
        own = without_unknown_fields(stripped, refused)
        if own is None:
            return None
        return own[0], names + own[1]
    return (stripped, names) if names else None


def parameter_number(parameter: ParameterSpec, value: float) -> float | int:
    """Whole numbers for int fields; floats kept to 6 significant digits (readable, and the same everywhere)."""
    if parameter.is_int():
        return round(value)
    return float(f"{value:.6g}")


def range_point(spec: RangeSpec, fraction: float) -> float:
    """The point `fraction` (0..1) of the way from min to max, on the range's scale."""
    if spec.scale == "log":
        return math.exp(math.log(spec.min) + fraction * (math.log(spec.max) - math.log(spec.min)))
    return spec.min + fraction * (spec.max - spec.min)


def grid_points(parameter: ParameterSpec) -> list[float | int]:
    """The values a grid tries for one parameter, in order, without repeats."""
    if parameter.values is not None:
        raw = parameter.values
    else:
        assert parameter.range is not None
        count = int(parameter.range.count or 1)
        raw = [range_point(parameter.range, i / (count - 1) if count > 1 else 0.0) for i in range(count)]
    points: list[float | int] = []
    for value in raw:
        number = parameter_number(parameter, value)
        if number not in points:
            points.append(number)
    return points
