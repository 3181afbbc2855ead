"""Two nodes of a multi-node run, as the Indexed Job's two pods would run them, on this one machine.

Each "pod" is the plain `train` command with its own NODE_RANK, work dir and termination log, both pointing
MASTER_ADDR at node 0 (a pod reaches it by the headless Service's DNS name; here 127.0.0.1). That is the
launcher's multi-node path for real: two torchrun agents rendezvous, each starts one worker, gloo joins them,
and each node's RNG state lands in the same checkpoint. Only the DNS name is not exercised (the local cluster
has no cluster DNS).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.trainer.builders import checkpoint_files, distributed_config
from tests.trainer.test_resume_distributed import complete_steps


def test_two_nodes_rendezvous_train_and_checkpoint_together(
    s3_bucket: Any, tiny_llama_uri: str, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    config = distributed_config(s3_bucket, tiny_llama_uri, tmp_path, steps=4, interval=2, workers=2, per_worker=1)
    port = str(free_port())
    nodes = []
    for rank in (0, 1):
        node = tmp_path / f"node-{rank}"
        node.mkdir()
        env = dict(
            trainer_env,
            NODE_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            FTO_WORK_DIR=str(node / "work"),
            FTO_TERMINATION_LOG=str(node / "termination-log"),
        )
        command = [sys.executable, "-m", "finetune_trainer", "train", "--config", str(config)]
        nodes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for rank, (node, output) in enumerate(zip(nodes, outputs, strict=True)):
        assert node.returncode == 0, f"node {rank}:\n{output[-4000:]}"
        assert "launching 2 x 1 processes" in output
    termination = json.loads((tmp_path / "node-0" / "termination-log").read_text())
    assert termination["code"] == "Succeeded" and termination["message"] == "trained 4 steps"
    # node 1 has no rank 0 and no report of its own, but its pod must still succeed (exit 0 above) and say so
    other = json.loads((tmp_path / "node-1" / "termination-log").read_text())
    assert other["code"] == "Succeeded" and "node 0" in other["message"]
    document = json.loads(
        s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="out/run-1/metrics.json")["Body"].read()
    )
    assert document["processes"] == 2
    assert complete_steps(s3_bucket) == [4]
    both_nodes = {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "_COMPLETE"}
    assert both_nodes <= checkpoint_files(s3_bucket, 4)
    leftovers = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "node-1").rglob("checkpoint-*"))
    assert not leftovers, "node 1 keeps checkpoint folders nobody rotates"
