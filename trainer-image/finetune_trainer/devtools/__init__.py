"""Development tools: tiny models built on the spot for tests, the demo and the benchmarks.

Why this package exists: nothing may come from a model hub (tests, the quickstart demo and the benchmarks
all run offline), so every model they need is built at test/demo/bench time: a byte-level BPE tokenizer
trained on a small corpus and a Llama with random weights (`tiny`). One builder, shared, so the tests, the
demo and the benchmarks cannot drift apart in how a "tiny model" is made; each caller passes its own sizes
and seeds. Never imported by the trainer or the server; it ships in the image only because it lives in
the package (it needs nothing beyond the trainer's own dependencies).
"""
