"""Serving a fine-tuned model: our OpenAI-compatible server (`server`), the adapters sidecar of a shared model
server (`adapters`), the gateway in front of vLLM (`gateway`), and the key rules both servers apply (`auth`,
`keyfile`).

Why apart from training: the server's pods run the same image but none of the training code (a `forbidden`
contract in pyproject.toml keeps it so), only `core` (storage, errors, the termination message) and the chat
template from `data`.
"""
