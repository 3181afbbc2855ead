"""`torch.compile` of a causal LM's decoder layers, with a named fallback to eager.

Why per layer and not the whole model: every decoder layer runs the same code, so one compiled graph (the
layer's parameters are its inputs) serves all of them; compile time is one layer's, not the model's, and
what stays eager (the embedding, the packed-sequence mask, the final norm, the hook that captures the last
hidden state for the label-position loss, `loss`) is exactly what compiling would not speed up. The shapes
change every step (a flattened micro-batch holds however many tokens its records have), so layers compile
with `dynamic=True`: one graph for every token count, not a recompile per step.

Where it pays is measured, not assumed (`bench/profile_step.py --compare compile`, docs/benchmarks.md): on
the 2-core CPU it was measured on, the gain was inside the noise (median 1.02x on a quiet machine; 0.84x the
peak memory), so it is off unless `FTO_TORCH_COMPILE=on`
asks for it (`decide`); `bench/gpu_check.sh` measures it on a GPU.

Fallback: inductor compiles lazily, on the first call, so an error shows there, not at `compile_layers`.
`probe` runs one forward and backward on a real batch, and on any error puts the layers back to eager
(`uncompile`) and says why, naming the error; training then starts on whichever model that left.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from finetune_trainer.core.errors import ConfigInvalid

log = logging.getLogger(__name__)

SETTING = "FTO_TORCH_COMPILE"
"""The trainer's environment variable that overrides the automatic decision: auto (default), on, off."""
CHOICES = ("auto", "on", "off")
NOT_MEASURED_TO_PAY = (
    "not measured to pay (CPU, SmolLM2-135M LoRA, quiet, 4 rounds: median 1.02x, 1.00x-1.14x; GPU: not measured)"
)
"""Why `auto` stays eager (docs/benchmarks.md): on CPU the step-time gain was within the machine's noise."""


def decoder_layers(model: Any) -> list[Any]:
    """The decoder's repeated blocks (`model.layers` of Llama-style decoders) under PEFT/DDP wrappers, or []."""
    inner = getattr(model, "module", model)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    return list(layers) if layers is not None else []


def compile_layers(model: Any, dynamic: bool = True, backend: Any = "inductor") -> int:
    """Compile every decoder layer in place (`nn.Module.compile`); the number compiled (0: nothing to do)."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=dynamic, backend=backend)
    return len(layers)


def uncompile(model: Any) -> None:
    """Put compiled layers back to eager (`nn.Module.compile` keeps the eager module under it)."""
    for layer in decoder_layers(model):
        layer._compiled_call_impl = None


def is_compiled(model: Any) -> bool:
    return any(getattr(layer, "_compiled_call_impl", None) is not None for layer in decoder_layers(model))


def probe(model: Any, step: Callable[[], Any]) -> str | None:
    """Run `step` (a forward and backward) on the compiled model; on error, back to eager.

    Returns None when the compiled model ran, else the error, named ("TypeName: message") for the log and the
    run's progress. Gradients the probe left are cleared either way: it is not a training step."""
    try:
        step()
        error = None
    except Exception as failure:  # any compile failure must fall back, whatever its type
        lines = [line.strip() for line in str(failure).splitlines() if line.strip()][:2]  # dynamo: cause on line 2
        error = f"{type(failure).__name__}: {' '.join(lines)}"
        uncompile(model)
        log.warning("torch.compile failed, training on the eager model instead: %s", error)
    for parameter in model.parameters():
        parameter.grad = None
    return error


def setting(environ: Mapping[str, str]) -> str:
    """`FTO_TORCH_COMPILE` from the environment (auto when unset); anything else is refused, by name."""
    value = (environ.get(SETTING) or "auto").strip().lower()
    if value not in CHOICES:
        raise ConfigInvalid(f"{SETTING}={environ.get(SETTING)!r}: must be one of {', '.join(CHOICES)}")
    return value


def decide(
    value: str,
    *,
    cuda: bool,
    causal_lm: bool,
    method: str,
    objective: str,
    sharded: bool,
    checkpointing: bool,
    layers: int,
    steps: int,
) -> tuple[bool, str]:
    """(compile or not, why: the log line's reason). `on` where compiling cannot apply is refused, naming why.

    The automatic rule compiles only what was measured to pay (docs/benchmarks.md), and nothing has been yet:
    on the 2-core CPU the compiled layers' median gain was 1.16x under load with step pairs 0.53x-1.44x,
    and 1.02x (1.00x-1.14x) in 4 quiet rounds of the throughput benchmark (it does lower the peak memory,
    0.84x), and no GPU has measured it (`bench/gpu_check.sh` runs the compiled variant). So `auto`
    is eager everywhere, saying why; `on` opts in where compiling applies. `cuda`, `objective`,
    `checkpointing` and `steps` are what a measured rule would weigh; they are named in the reason."""
    if value == "off":
        return False, f"{SETTING}=off"
    cannot = [why for bad, why in (
        (not causal_lm, "not a causal language model"),
        (sharded, "FSDP sharding"),
        (method == "qlora", "QLoRA's 4-bit layers"),
        (layers == 0, "no decoder layers found"),
    ) if bad]  # fmt: skip
    if value == "on":
        if cannot:
            raise ConfigInvalid(f"{SETTING}=on: torch.compile does not apply to this run ({'; '.join(cannot)})")
        return True, f"{SETTING}=on"
    device = "GPU" if cuda else "CPU"
    setup = (
        f"{device}, objective {objective}, {'with' if checkpointing else 'no'} gradient checkpointing, {steps} steps"
    )
    return False, f"auto: {'; '.join([*cannot, NOT_MEASURED_TO_PAY])} ({setup})"
