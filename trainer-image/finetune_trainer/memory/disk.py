"""How much local disk a training pod needs, pure: the base model, the data, the checkpoints written locally
and the final output, with a margin. The operator turns the total into the training container's
`ephemeral-storage` request and limit.

Why: without a request the scheduler may place a run on a node whose disk it then fills, and without a limit a
run that writes too much fills the node's disk until the kubelet evicts every pod on it (issue #29). The figures
are what this trainer writes under its work folder (`training/train.py`): the model and data fetched once, the
Trainer's own checkpoint (`save_total_limit=1`), the copy staged for upload, and the one being written while both
exist, so three checkpoints at a time; then the output (an adapter or the whole model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from finetune_trainer.core.errors import ConfigInvalid, DiskRequestTooSmall
from finetune_trainer.memory.check import parse_quantity

GiB = 2**30
MARGIN_FRACTION = 0.25
"""Headroom over the sum: tokenizer and HF caches, logs, TensorBoard files, `.part` files of downloads."""
MARGIN_BYTES = 1 * GiB
"""Fixed headroom for a small model, where a fraction of little is still little."""
CHECKPOINTS_AT_ONCE = 3
"""The Trainer's saved checkpoint, the copy being uploaded, and the next one being written."""
OPTIMIZER_BYTES_PER_TRAINABLE = 8
"""AdamW's two fp32 moments per trainable parameter, saved with every checkpoint."""
ASSUMED_LORA_FRACTION = 0.02
"""Trainable share assumed for an adapter when no memory plan counted it (rank-16 LoRA is well under 1%)."""

Method = Literal["lora", "qlora", "full"]


@dataclass(frozen=True)
class DiskPlan:
    model_bytes: int
    data_bytes: int
    checkpoint_bytes: int  # one checkpoint
    output_bytes: int
    total_bytes: int  # with the margin: the container's ephemeral-storage request and limit

    def to_status(self) -> dict[str, int]:
        return {
            "modelBytes": self.model_bytes,
            "dataBytes": self.data_bytes,
            "checkpointBytes": self.checkpoint_bytes,
            "checkpointsAtOnce": CHECKPOINTS_AT_ONCE,
            "outputBytes": self.output_bytes,
            "totalBytes": self.total_bytes,
        }


def disk_plan(
    *,
    model_bytes: int,
    data_bytes: int,
    method: Method,
    parameters: int | None = None,
    trainable_parameters: int | None = None,
) -> DiskPlan:
    """The local disk one training pod needs. `parameters`/`trainable_parameters` come from the memory plan
    when it knew the architecture; without them the model's files stand in (2 bytes a parameter, bf16)."""
    params = parameters if parameters is not None else model_bytes // 2
    if method == "full":
        trainable = params
        # the weights as stored (about the model's own files) plus the optimizer's moments
        checkpoint = model_bytes + OPTIMIZER_BYTES_PER_TRAINABLE * trainable
        output = model_bytes
    else:
        trainable = trainable_parameters if trainable_parameters is not None else int(params * ASSUMED_LORA_FRACTION)
        adapter = 4 * trainable  # adapters are saved in fp32
        checkpoint = adapter + OPTIMIZER_BYTES_PER_TRAINABLE * trainable
        output = adapter
    subtotal = model_bytes + data_bytes + CHECKPOINTS_AT_ONCE * checkpoint + output
    total = int(subtotal * (1 + MARGIN_FRACTION)) + MARGIN_BYTES
    return DiskPlan(model_bytes, data_bytes, checkpoint, output, total)


def requested_bytes(limit: str) -> int | None:
    """Bytes of resources.ephemeralStorage as the operator passes it (`--disk-limit`); None when unset."""
    if not limit.strip():
        return None
    try:
        return parse_quantity(limit)
    except ConfigInvalid:
        raise ConfigInvalid(
            f"resources.ephemeralStorage: {limit!r} is not a Kubernetes quantity such as 100Gi"
        ) from None


def check_request(downloads: Sequence[tuple[str, int]], limit: str) -> None:
    """Refuse, as the user's error, inputs that cannot fit the disk the job asked for. Pure.

    `downloads`: (what, bytes) of each input the training pod must copy to its disk before it trains (the base
    model's files, the data). Why a user error and not the node's: the training container's ephemeral-storage
    limit is resources.ephemeralStorage, so a pod that downloads more is evicted on every node, every attempt;
    only a larger request or smaller inputs help. The bare sum is compared (checkpoints and the output come on
    top), so nothing that could fit is refused."""
    allowed = requested_bytes(limit)
    needed = sum(size for _, size in downloads)
    if allowed is None or needed <= allowed:
        return
    suggested = math.ceil(needed * (1 + MARGIN_FRACTION) / GiB) + MARGIN_BYTES // GiB
    parts = "; ".join(f"{what}: {size / GiB:.2f} GiB" for what, size in downloads)
    raise DiskRequestTooSmall(
        f"resources.ephemeralStorage is {limit} ({allowed / GiB:.2f} GiB), but the training pod must download "
        f"{needed / GiB:.2f} GiB before it trains ({parts}). Set resources.ephemeralStorage to at least "
        f"{suggested}Gi (checkpoints and the output "
        "need more; left unset, the data check plans it, status.validation.diskPlan), or use a smaller model or "
        "dataset (another repo, revision or path)"
    )
