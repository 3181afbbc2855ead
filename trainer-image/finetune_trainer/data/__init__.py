"""The data of a run: reading files (`readers`), the dataset formats (`formats`), the split, labels, tokenization.

Why its own layer: everything here is about records and tokens, never about a model's weights or a device, so
the trainer config (`finetune_trainer.config`, which validates `dataset.schema` against `formats`), training,
evaluation and the server (the chat template) all build on it, and it imports only `core`.
"""
