"""Serving a fine-tuned model: our OpenAI-compatible server (`server`) and the adapters sidecar of a shared
model server (`adapters`).

Why apart from training: the server's pods run the same image but none of the training code (a `forbidden`
contract in pyproject.toml keeps it so), only `core` (storage, errors, the termination message) and the chat
template from `data`.
"""
