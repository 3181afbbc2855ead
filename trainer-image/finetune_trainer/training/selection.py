"""Model selection by validation loss: when to evaluate, which evaluation is the best, when to stop. Pure.

Why its own state, kept in object storage: with `evaluation.intervalSteps` the model that is tested, gated
and published is the one with the lowest validation loss, not the last one, and a run may be preempted and
resumed any number of times on the way. The whole decision state (every evaluation so far, the best one, whether
early stopping fired) is this small value, written to `run-N/selection.json` after every evaluation (and after
the best model's weights, so the file never names weights that are not complete); a new attempt reads it back
(`finetune_trainer.training.best_model` does the I/O). Nothing here touches torch or storage, so the rules are
unit-tested directly.

The rules (Keras' EarlyStopping with restore_best_weights, which users know): an evaluation improves when its
loss is below the best one by more than `minDelta`; only an improvement becomes the new best; early stopping
fires when `patience` evaluations in a row did not improve. After a resume the evaluations later than the
resumed step are forgotten (those steps are trained again and evaluated again), but the best model stays the
best even when it came from such a step: its weights are complete in storage and it was measured on the same
validation split, so a repeated, slightly different evaluation of that step never hides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any


def due(step: int, interval: int, max_steps: int) -> bool:
    """Whether the validation loss is computed after optimizer step `step`: every `interval`, and at the last."""
    return step > 0 and (step % interval == 0 or (max_steps > 0 and step >= max_steps))


@dataclass(frozen=True)
class Evaluation:
    step: int
    loss: float

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "loss": self.loss}


@dataclass(frozen=True)
class SelectionState:
    """Every validation evaluation of the run, the best one, and whether early stopping fired (and where)."""

    history: tuple[Evaluation, ...] = ()
    best: Evaluation | None = None
    stopped_at: int | None = None
    """The step at which early stopping fired; None while it has not."""
    best_folder: str | None = None
    """Where the best model's weights are, relative to `run-N/best/` (unique per save, never rewritten)."""

    @property
    def since_best(self) -> int:
        """Evaluations of steps after the best one's (none of them improved on it, by construction)."""
        if self.best is None:
            return len(self.history)
        return sum(1 for e in self.history if e.step > self.best.step)

    @property
    def latest(self) -> Evaluation | None:
        return self.history[-1] if self.history else None

    @property
    def early_stopped(self) -> bool:
        return self.stopped_at is not None

    def improves(self, loss: float, min_delta: float) -> bool:
        """Whether `loss` would become the new best (a NaN or infinite loss never does)."""
        if not math.isfinite(loss):
            return False
        return self.best is None or loss < self.best.loss - min_delta

    def record(self, step: int, loss: float, min_delta: float, patience: int | None) -> SelectionState:
        """The state after the evaluation (step, loss); `patience` None: no early stopping."""
        evaluation = Evaluation(step, loss)
        history = (*(e for e in self.history if e.step != step), evaluation)
        best = evaluation if self.improves(loss, min_delta) else self.best
        state = replace(self, history=history, best=best)
        if patience is not None and state.stopped_at is None and state.since_best >= patience:
            state = replace(state, stopped_at=step)
        return state

    def resumed_at(self, step: int) -> SelectionState:
        """The state a new attempt resuming from checkpoint `step` continues with (the module says why)."""
        stopped = self.stopped_at if self.stopped_at is not None and self.stopped_at <= step else None
        return replace(self, history=tuple(e for e in self.history if e.step <= step), stopped_at=stopped)

    def to_json(self) -> dict[str, Any]:
        return {
            "history": [e.to_json() for e in self.history],
            "best": self.best.to_json() if self.best else None,
            "earlyStopped": self.early_stopped,
            "stoppedAtStep": self.stopped_at,
            "bestFolder": self.best_folder,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SelectionState:
        best = data.get("best")
        return cls(
            history=tuple(Evaluation(int(e["step"]), float(e["loss"])) for e in data.get("history") or []),
            best=Evaluation(int(best["step"]), float(best["loss"])) if best else None,
            stopped_at=int(data["stoppedAtStep"]) if data.get("stoppedAtStep") is not None else None,
            best_folder=data.get("bestFolder"),
        )

    def progress(self) -> dict[str, Any]:
        """The `status.progress` fields (docs/trainer-contract.md section 4); None deletes a stale value."""
        latest, best = self.latest, self.best
        return {
            "validationLoss": round(latest.loss, 6) if latest and math.isfinite(latest.loss) else None,
            "validationStep": latest.step if latest else None,
            "bestValidationLoss": round(best.loss, 6) if best else None,
            "bestValidationStep": best.step if best else None,
            "earlyStopped": True if self.early_stopped else None,
        }

    def describe(self, last_step: int) -> str:
        """One line for the report: which step was selected and why training ended where it did."""
        if self.best is None:
            return f"no validation loss was finite; the last step ({last_step}) is used"
        chosen = f"step {self.best.step} (validation loss {self.best.loss:.4f}, lowest of {len(self.history)})"
        if self.best.step == last_step:
            chosen += ", the last step"
        else:
            chosen += f", not the last step {last_step}"
        if self.stopped_at is not None:
            chosen += (
                f"; early stopping fired at step {self.stopped_at} ({self.since_best} evaluations without improvement)"
            )
        return chosen

    def facts(self, last_step: int) -> dict[str, Any]:
        """What metrics.json and the report say about the selection (docs/trainer-contract.md section 5)."""
        return {
            "bestStep": self.best.step if self.best else None,
            "earlyStopped": self.early_stopped,
            "selection": self.describe(last_step),
            "validationHistory": self.to_json(),
        }


PROGRESS_FIELDS = tuple(SelectionState().progress())
"""The progress fields selection owns: all null at a run's first report, so nothing of an earlier run lingers."""


def stale_folders(present: set[str], best_folder: str | None) -> list[str]:
    """Best-model folders that can be deleted once `selection.json` names `best_folder`: every other one
    (earlier bests, and a save a crash interrupted before selection.json named it)."""
    return sorted(folder for folder in present if folder != best_folder)
