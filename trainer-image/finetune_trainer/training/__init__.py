"""One training run from inputs to artifacts (`train`), and the `validate` stage that checks its inputs first.

Why together: these modules run inside the transformers Trainer's loop or prepare it: inputs, the model and
method, hooks (signals, checkpoints and their uploads, progress, best model selection, tracking), FSDP, the
torchrun launcher and the outputs. The model server never imports them (a `forbidden` contract in pyproject.toml).
"""
