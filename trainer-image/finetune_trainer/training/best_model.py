"""Validation while training, early stopping and the best model (`evaluation.intervalSteps`, `earlyStopping`).

Why a callback of its own, with its own store: the decisions are `finetune_trainer.training.selection` (pure); this
module runs them inside the Trainer's loop and keeps their state where a new attempt finds it. Every
`intervalSteps` optimizer steps (and at the last one) every rank computes the validation loss with the
trainer's own evaluation loop (`evaluation.metrics.evaluate`; the test split is never looked at); on an improvement
the model's weights are saved with the Trainer (`save_model`: an adapter for lora/qlora, the full weights
otherwise, gathered under FSDP) and rank 0 uploads them to `run-N/best/<folder>/` before it rewrites
`run-N/selection.json`, which names that folder: so the state in storage never points at incomplete
weights, whenever the pod dies. Older best folders are deleted after that.

The upload happens on the training thread, once per improvement (an adapter is megabytes, full weights of a
large model take longer: the steps wait meanwhile). After training, `restore_best` loads the best weights into
the model (downloading them when an earlier attempt saved them), so the final evaluation, the gate and the
published model are the best checkpoint's. The validation loss is also logged as `eval_loss` in the Trainer's
log (the report's curve, the trackers) and sent as `status.progress.validationLoss` / `bestValidationLoss`.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune_trainer.config import EvaluationSpec
from finetune_trainer.core import distributed
from finetune_trainer.core.errors import StorageNotFound
from finetune_trainer.core.s3_uri import S3Uri, relative_key
from finetune_trainer.core.storage import Storage
from finetune_trainer.training.progress import Reporter
from finetune_trainer.training.selection import SelectionState, due, stale_folders

log = logging.getLogger(__name__)


class SelectionStore:
    """`run-N/selection.json` and the best model's folders under `run-N/best/`."""

    def __init__(self, storage: Storage, run_uri: S3Uri) -> None:
        self.storage = storage
        self.state_uri = run_uri.join("selection.json")
        self.root = run_uri.join("best/")

    def load(self) -> SelectionState:
        try:
            return SelectionState.from_json(json.loads(self.storage.read_bytes(self.state_uri)))
        except StorageNotFound:
            return SelectionState()

    def save(self, state: SelectionState) -> None:
        self.storage.write_bytes(self.state_uri, json.dumps(state.to_json()).encode(), "application/json")

    def upload(self, local: Path, folder: str) -> None:
        self.storage.upload_dir(local, self.root.join(f"{folder}/"))

    def prune(self, state: SelectionState) -> None:
        """Delete every best folder selection.json does not name."""
        present = {relative_key(o.uri, self.root).split("/", 1)[0] for o in self.storage.iter_objects(self.root)}
        for folder in stale_folders(present, state.best_folder):
            self.storage.delete_prefix(self.root.join(f"{folder}/"))

    def fetch(self, folder: str, local: Path) -> Path:
        if not local.exists():
            self.storage.download(self.root.join(f"{folder}/"), local)
        return local


class SelectionHooks(TrainerCallback):  # type: ignore[misc]
    """Validation every `intervalSteps`, the best model saved on each improvement, early stopping.

    Runs on every rank (the evaluation and the Trainer's save are collectives); only rank 0 writes storage.
    `validation_loss(model)` computes the loss on the validation split; `stopping()` is True on every rank once
    the ranks agreed to stop for SIGTERM (TrainerHooks), and then no evaluation starts.
    """

    def __init__(
        self,
        *,
        spec: EvaluationSpec,
        store: SelectionStore,
        reporter: Reporter,
        validation_loss: Callable[[Any], float],
        stopping: Callable[[], bool],
        work: Path,
    ) -> None:
        if spec.interval_steps is None:
            raise ValueError("SelectionHooks needs evaluation.intervalSteps")
        self.interval = spec.interval_steps
        self.patience = spec.early_stopping.patience if spec.early_stopping else None
        self.min_delta = spec.early_stopping.min_delta if spec.early_stopping else 0.0
        self.store = store
        self.reporter = reporter
        self.validation_loss = validation_loss
        self.stopping = stopping
        self.work = work
        self.state = SelectionState()
        self.trainer: Any = None
        """Set by `attach`: `save_model` and `log` are the Trainer's."""

    def attach(self, trainer: Any) -> SelectionHooks:
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.state = self.store.load().resumed_at(state.global_step)
        if self.state.history:
            log.info("selection resumed at step %d: %s", state.global_step, self.state.to_json())
        self.reporter.extra.update(self.state.progress())
        if self.state.early_stopped:  # an earlier attempt stopped early and was killed while evaluating
            control.should_training_stop = True  # (the Trainer still takes one step; the best model is loaded)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        if self.stopping() or not due(step, self.interval, state.max_steps):
            return
        loss = self.validation_loss(kwargs["model"])
        before = self.state
        self.state = before.record(step, loss, self.min_delta, self.patience)
        if self.state.best is not before.best:
            self._save_best(step)
        elif distributed.is_main():
            self.store.save(self.state)
        distributed.barrier()
        # Trainer.log ends with the callbacks' on_log, which clears control.should_log: the Trainer would then
        # skip logging this step's training loss (it logs after on_step_end), so a validated step would have no
        # train loss in the history, TensorBoard or the result file. Keep the Trainer's own decision.
        should_log = control.should_log
        self.trainer.log({"eval_loss": loss})
        control.should_log = should_log
        self.reporter.extra.update(self.state.progress())
        log.info(
            "validation loss %.6f at step %d (best %.6f at step %s)",
            loss,
            step,
            self.state.best.loss if self.state.best else float("nan"),
            self.state.best.step if self.state.best else "-",
        )
        if self.state.early_stopped and not before.early_stopped:
            log.info("early stopping at step %d: %s", step, self.state.describe(step))
            control.should_training_stop = True
            control.should_save = True  # as at the last step: a pod killed while evaluating resumes from here

    def _save_best(self, step: int) -> None:
        """Weights first (every rank: FSDP gathers), then rank 0 uploads, names them, and prunes older ones."""
        folder = f"step-{step}-{uuid.uuid4().hex[:8]}"
        local = self.work / "best" / "pending"
        if distributed.is_main():
            shutil.rmtree(local, ignore_errors=True)
        distributed.barrier()
        if getattr(self.trainer, "is_fsdp_enabled", False):
            weights = gathered_weights(self.trainer.model)  # a collective: every rank
            if distributed.is_main():
                self.trainer.model.save_pretrained(str(local), state_dict=weights)
        else:
            self.trainer.save_model(str(local))
        if distributed.is_main():
            self.store.upload(local, folder)
            self.state = replace(self.state, best_folder=folder)
            self.store.save(self.state)
            self.store.prune(self.state)
            target = self.work / "best" / folder
            shutil.rmtree(target, ignore_errors=True)
            local.rename(target)
            log.info("best model so far (step %d) saved to %s", step, self.store.root.join(f"{folder}/"))

    def restore_best(self, trainer: Any) -> SelectionState:
        """Load the best weights into the trainer's model (every rank); returns the final selection state.

        Reads the state rank 0 last wrote (other ranks never learn the folder name during training).
        """
        distributed.barrier()
        final = self.store.load()
        if not final.history:  # no evaluation happened in any attempt (e.g. stopped before the first)
            return self.state
        self.state = final
        self.reporter.extra.update(final.progress())
        if final.best is None or final.best_folder is None:
            log.warning("no finite validation loss; the last step's model is evaluated and published")
            return final
        if final.latest == final.best and final.best.step == trainer.state.global_step:
            return final  # the last evaluation, of the live weights, is the best one
        local = self.work / "best" / final.best_folder
        log.info("loading the best model (step %d) from %s", final.best.step, local)
        if getattr(trainer, "is_fsdp_enabled", False):  # rank 0 reads the whole model and sends each rank its shard
            if distributed.is_main():
                self.store.fetch(final.best_folder, local)
            load_gathered(trainer.model, local if distributed.is_main() else None)
            return final
        with distributed.local_main_first():
            self.store.fetch(final.best_folder, local)
        trainer._load_from_checkpoint(str(local))
        return final


def gathered_weights(model: Any) -> dict[str, Any]:
    """A sharded (FSDP) model's whole weights: on rank 0 (host memory) on GPUs; every rank gets a copy on CPU,
    where torch's offload would leave DTensor shards that safetensors cannot save (as `sharding` gathers them)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    on_gpu = next(model.parameters()).device.type != "cpu"
    state: dict[str, Any] = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=on_gpu)
    )
    return state


def load_gathered(model: Any, folder: Path | None) -> None:
    """Load whole weights saved by `save_pretrained` into a sharded model; `folder` on rank 0 only (None elsewhere).

    Rank 0 reads every `*.safetensors` file and broadcasts (torch's `broadcast_from_rank0`); keys the file
    leaves out (a tied output layer) keep the parameter they share."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state: dict[str, Any] = {}
    for path in sorted(folder.glob("*.safetensors")) if folder is not None else []:
        state.update(load_file(str(path)))
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, state, options=options)
