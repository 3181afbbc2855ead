"""The gateway in front of vLLM: the one container of a vLLM server pod that listens on the Service port.

Why: vLLM's own server would expose its runtime-LoRA routes (/v1/load_lora_adapter, /v1/unload_lora_adapter)
and everything else it serves to any pod that reaches the Service, with one key for every tenant of a shared
server. So vLLM binds 127.0.0.1 only, and this small proxy (no torch, no model: starlette, uvicorn, httpx) takes
the Service port: it runs our server's guard (key before body, tenant keys from adapters.json, body size,
concurrency, body timeout), bounds `max_tokens`, and forwards only the OpenAI inference routes to vLLM over
loopback, streaming. docs/serving.md, "The gateway in front of vLLM".
"""
