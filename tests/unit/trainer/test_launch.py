"""When `train` launches torchrun itself, and which exit code the pod gets from the workers' outcome."""

from __future__ import annotations

from pathlib import Path

from finetune_trainer.training.launch import needs_launch, pod_exit_code, torchrun_command


def test_needs_launch_only_for_several_processes_outside_torchrun() -> None:
    several = {"distributed": {"workers": 2, "processesPerWorker": 1}}
    assert needs_launch(several, {})
    assert not needs_launch(several, {"LOCAL_RANK": "0"})
    assert not needs_launch({"distributed": {"workers": 1, "processesPerWorker": 1}}, {})
    sharded_alone = {"distributed": {"workers": 1, "processesPerWorker": 1, "sharding": "fsdp"}}
    assert needs_launch(sharded_alone, {}) and not needs_launch(sharded_alone, {"LOCAL_RANK": "0"})  # FSDP: a group
    assert not needs_launch({}, {})


def test_exit_code_follows_the_termination_code() -> None:
    assert pod_exit_code("Succeeded", 0) == 0
    assert pod_exit_code("DatasetInvalid", 1) == 42
    assert pod_exit_code("StorageAccessDenied", 1) == 42
    assert pod_exit_code("Preempted", 1) == 75
    assert pod_exit_code("InternalError", 1) == 1
    assert pod_exit_code(None, 137) == 137
    assert pod_exit_code(None, 42) == 1  # never fake a user error without a message saying so
    assert pod_exit_code("Succeeded", -9) == 137


def test_torchrun_command_uses_the_pod_rendezvous_environment() -> None:
    command = torchrun_command(
        Path("/etc/finetune/config.json"),
        3,
        8,
        {"NODE_RANK": "2", "MASTER_ADDR": "job-0.svc", "MASTER_PORT": "29500"},
    )
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert "--nnodes=3" in command and "--nproc-per-node=8" in command and "--node-rank=2" in command
    assert "--master-addr=job-0.svc" in command and command[-2:] == ["--config", "/etc/finetune/config.json"]
