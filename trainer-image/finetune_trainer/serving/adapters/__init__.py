"""The adapters sidecar of a shared model server (`python -m finetune_trainer adapters`)."""
