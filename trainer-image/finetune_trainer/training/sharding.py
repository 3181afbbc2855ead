"""Sharded full fine-tuning (`distributed.sharding: fsdp`): FSDP2 through the Trainer and accelerate.

Why: a full fine-tune keeps fp32 weights, gradients and two Adam moments, 16 bytes per parameter; under
plain DDP every process holds all of them (an 8B model: ~128 GB per GPU before activations). FSDP shards the
three over every process of the run and gathers one decoder layer at a time (docs/memory.md), so the same
run fits 8 x 80 GB GPUs. Everything here is the Trainer's own FSDP2 support (`fsdp=True`, `fsdp_config`);
this module only says which options, and fills the two gaps this trainer meets:

- accelerate turns FSDP on for multi-GPU runs only; a CPU run (gloo, the project's tests) would silently get
  plain DDP. `trainer_class` returns a Trainer that installs the FSDP plugin on CPU too, so what the CPU tests
  exercise is the sharded path the GPUs run.
- checkpoints are sharded (`SHARDED_STATE_DICT`: torch.distributed.checkpoint, one `__<rank>_0.distcp` per
  process plus `.metadata`), which load on any number of processes (DCP reshards on load), and each rank
  uploads its own shard (`checkpoints.uploads`). The final model is gathered into one ordinary
  `model.safetensors` (`full_state_dict`), a collective every rank must join.

Activation checkpointing goes through `fsdp_config["activation_checkpointing"]`, not the Trainer argument:
transformers refuses both at once, and the argument would add a redundant all-gather in backward.
"""

from __future__ import annotations

import re
from typing import Any

from finetune_trainer.config import TrainerConfig

SHARD_FILE = re.compile(r"^__(\d+)_\d+\.distcp$")
"""A torch.distributed.checkpoint shard file, `__<rank>_<n>.distcp`, written by that rank alone."""


def sharded(cfg: TrainerConfig) -> bool:
    return cfg.distributed.sharding == "fsdp"


def training_arguments(cfg: TrainerConfig) -> dict[str, Any]:
    """The TrainingArguments fields for the config's sharding and gradient checkpointing (a resolved config:
    `gradientCheckpointing` decided, `memory.check.decide_for_device`)."""
    checkpointing = bool(cfg.hyperparameters.gradient_checkpointing)
    if not sharded(cfg):
        return {"activation_checkpointing": checkpointing}
    return {
        "activation_checkpointing": False,
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "reshard_after_forward": True,  # full shard: the plan counts two gathered layers, not the model
            "state_dict_type": "SHARDED_STATE_DICT",
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one FSDP unit per decoder layer (_no_split_modules)
            "activation_checkpointing": checkpointing,
        },
    }


def trainer_class(cfg: TrainerConfig) -> type[Any]:
    """transformers' Trainer; for a sharded run on CPU one that installs the FSDP plugin accelerate leaves out."""
    from transformers import Trainer

    if not sharded(cfg):
        return Trainer

    class ShardedTrainer(Trainer):
        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

            state = self.accelerator.state
            if self.is_fsdp_enabled or self.args.fsdp_plugin_args is None:
                return
            if state.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.NO):
                raise RuntimeError(f"distributed.sharding fsdp: accelerate chose {state.distributed_type}, not FSDP")
            state.distributed_type = DistributedType.FSDP
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            self.is_fsdp_enabled = True

    return ShardedTrainer


def full_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The trained weights gathered from every shard (on rank 0; an empty dict elsewhere); None when the run
    is not sharded (the model's own state dict is whole). Every rank must call it."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # On GPUs the whole model lands in rank 0's host memory (cpu_offload; the others get nothing). On CPU
    # torch's offload leaves the DTensor shards as they are (they are "on the CPU" already), which
    # safetensors cannot save: gather them as plain tensors instead (every rank gets a copy).
    on_gpu = next(trainer.model.parameters()).device.type != "cpu"
    options = StateDictOptions(full_state_dict=True, cpu_offload=on_gpu)
    state: dict[str, Any] = get_model_state_dict(trainer.model, options=options)
    return state
