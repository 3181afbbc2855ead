"""Loading the base model and tokenizer, choosing precision, and applying the method (LoRA, QLoRA, full).

Why here: these are the decisions that depend on the hardware. `choose_precision` is pure (the device's
capabilities in, a dtype name out) so it is unit-tested; QLoRA without CUDA or bitsandbytes is a user
error (`UnsupportedHardware`, exit 42) raised before any weights are read, because retrying on the same
node can never succeed. A folder that is not a Hugging Face model is `ModelInvalid` with what was found.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer.config import TrainerConfig
from finetune_trainer.core.errors import ConfigInvalid, ModelInvalid, UnsupportedHardware
from finetune_trainer.training import fused_lora, segmented_attention

log = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class Hardware:
    """What the process can use; filled from torch at start, passed around as data."""

    cuda: bool
    bf16: bool
    bitsandbytes: bool

    @classmethod
    def detect(cls) -> Hardware:
        import torch

        cuda = torch.cuda.is_available()
        return cls(
            cuda=cuda,
            bf16=cuda and torch.cuda.is_bf16_supported(),
            bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None,
        )


def choose_precision(requested: str, hardware: Hardware) -> str:
    """`auto` -> bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU; explicit choices are checked."""
    if requested == "auto":
        if hardware.cuda:
            return "bf16" if hardware.bf16 else "fp16"
        return "fp32"
    if requested == "fp16" and not hardware.cuda:
        raise UnsupportedHardware("hyperparameters.precision fp16 needs a CUDA GPU; use auto, fp32 or bf16")
    if requested == "bf16" and hardware.cuda and not hardware.bf16:
        raise UnsupportedHardware("hyperparameters.precision bf16 is not supported by this GPU; use auto or fp16")
    return requested


def check_method(cfg: TrainerConfig, hardware: Hardware) -> None:
    """Refuse QLoRA where it cannot run, before downloading anything."""
    if cfg.method.type != "qlora":
        return
    if not hardware.cuda:
        raise UnsupportedHardware(
            "method.type qlora needs a CUDA GPU (4-bit bitsandbytes kernels); this pod "
            "has none. Request resources.gpus, or use method.type lora"
        )
    if not hardware.bitsandbytes:
        raise UnsupportedHardware("method.type qlora needs the bitsandbytes package, missing from this image")


def check_model_folder(folder: Path, uri: str) -> None:
    """Fail clearly when the downloaded folder lacks config, weights or tokenizer."""
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
    if not (folder / "config.json").is_file():
        raise ModelInvalid(f"{uri} is not a Hugging Face model folder: no config.json (found: {shown})")
    if not any(folder.glob(pattern) for pattern in WEIGHT_PATTERNS):
        raise ModelInvalid(f"{uri} has no weights (*.safetensors or pytorch_model*.bin; found: {shown})")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelInvalid(f"{uri} has no tokenizer (tokenizer.json / tokenizer_config.json; found: {shown})")


def load_tokenizer(folder: Path, uri: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    except Exception as error:
        raise ModelInvalid(f"{uri}: cannot load the tokenizer: {error}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def attention_implementation(
    cuda: bool, precision: str, flash_installed: bool, model_type: str | None = None, causal_lm: bool = True
) -> str | None:
    """flash_attention_2 on a GPU in bf16/fp16 where the flash-attn package is installed: its variable-length
    kernel reads the flattened micro-batch's position ids, so no T x T block-diagonal mask is built (the
    memory plan's largest activation term) and no compute is spent on it. On CPU, causal LMs of the families
    `segmented_attention` covers attend record by record (the same arithmetic without the T^2 scores).
    None: transformers' default (SDPA where the architecture has it)."""
    if cuda and precision in ("bf16", "fp16") and flash_installed:
        return "flash_attention_2"
    if causal_lm and segmented_attention.applies(model_type, cuda):
        return segmented_attention.register()
    return None


def torch_dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def load_model(cfg: TrainerConfig, folder: Path, labels: list[str] | None, precision: str) -> Any:
    """The base model with the task head, quantized for QLoRA; weights kept in fp32 for mixed precision."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    uri = cfg.base_model.uri
    try:
        model_config = AutoConfig.from_pretrained(str(folder))
    except Exception as error:
        raise ModelInvalid(f"{uri}: config.json is not a usable model config: {error}") from None
    # Full fine-tuning keeps fp32 master weights (mixed precision autocasts the matmuls); LoRA's base
    # weights are frozen, so they are loaded in the compute precision: half the memory, same result.
    frozen_in_half = cfg.method.type == "lora" and precision in ("bf16", "fp16")
    kwargs: dict[str, Any] = {"dtype": torch_dtype(precision) if frozen_in_half else torch.float32}
    flash = importlib.util.find_spec("flash_attn") is not None
    model_type = getattr(model_config, "model_type", None)
    attention = attention_implementation(torch.cuda.is_available(), precision, flash, model_type, labels is None)
    if attention is not None:
        kwargs["attn_implementation"] = attention
        log.info("attention: %s", attention)
    if cfg.method.type == "qlora":
        from transformers import BitsAndBytesConfig

        compute = torch_dtype(precision if precision != "fp32" else "bf16")
        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        kwargs["dtype"] = compute
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    try:
        if labels is not None:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder),
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={name: i for i, name in enumerate(labels)},
                ignore_mismatched_sizes=True,
                **kwargs,
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelInvalid(f"{uri}: cannot load the model for task {cfg.base_model.task}: {error}") from None
    if getattr(model.config, "pad_token_id", None) is None and labels is not None:
        model.config.pad_token_id = 0
    # A KV cache during training disables the packed-sequence (block-diagonal) attention mask that
    # flattened batches rely on; it is only useful for generation.
    model.config.use_cache = False
    return model


def apply_method(model: Any, cfg: TrainerConfig, fused: bool = True) -> Any:
    """Wrap the model in a LoRA adapter (lora/qlora) or leave every weight trainable (full). Its adapter layers
    compute base and adapter in one pass (`fused_lora`) unless `fused` is False (the benchmark's arm that
    measures peft's own forward)."""
    if cfg.method.type == "full":
        return model
    import torch
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if cfg.method.type == "qlora":
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=False
        )
    lora = cfg.method.lora
    targets: str | list[str] = "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)
    task = TaskType.SEQ_CLS if cfg.base_model.task == "sequence-classification" else TaskType.CAUSAL_LM
    peft_config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type=task
    )
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as error:
        raise ConfigInvalid(f"method.lora.targetModules: {error}") from None
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()  # optimizer state and updates in fp32 (fp16 needs it)
    if fused:
        fused_lora.fuse(model)
    trainable, total = model.get_nb_trainable_parameters()
    log.info(
        "LoRA rank %d: %d of %d parameters trainable (%.2f%%)",
        lora.rank,
        trainable,
        total,
        100.0 * trainable / max(total, 1),
    )
    return model
