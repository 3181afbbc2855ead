"""finetune_trainer: the program inside the training pod (and, under `serving/`, the model server).

Run as `python -m finetune_trainer train --config FILE`; see docs/trainer-contract.md for the contract
with the operator.

One subpackage per stage, each importing only the ones below it (the `layers` contract in pyproject.toml):
`cli` on top; `serving` (the OpenAI server and the adapters sidecar) and `training` (a run from inputs to
artifacts, and `validate`) beside each other, never importing each other; below them `evaluation` (metrics,
generation, the report) and `memory` (the memory plan and its check); then `config` (the operator -> trainer
contract); `data` (readers, formats, split, labels, tokenization and the chat template); and `core` (errors
and exit codes, the termination message, storage, process-group and CPU helpers) at the bottom.
"""
