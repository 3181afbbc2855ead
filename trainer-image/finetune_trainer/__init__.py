"""finetune_trainer: the program inside the training pod (and, under `serve/`, the model server).

Run as `python -m finetune_trainer train --config FILE`; see docs/trainer-contract.md for the contract
with the operator.
"""
