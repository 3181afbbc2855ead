"""The model server: an OpenAI-compatible HTTP API in front of a fine-tuned model.

Same image as the trainer, its own entry point (`python -m finetune_trainer serve --config serve.json`,
see `cli`). The app factory lives in `app.create_app` so tests and the benchmark import the app instead of
starting a process; generation runs on one worker thread with dynamic batching (`engine`), so concurrent
requests share forward passes without sharing state. The contract is docs/trainer-contract.md section 6.
"""
