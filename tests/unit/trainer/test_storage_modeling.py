"""URI parsing, botocore error classification, precision choice and the QLoRA hardware check."""

from __future__ import annotations

from typing import Any

import pytest
from finetune_trainer.config import parse_config
from finetune_trainer.core.errors import (
    ConfigInvalid,
    InternalError,
    StorageAccessDenied,
    StorageNotFound,
    UnsupportedHardware,
)
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.core.storage import raise_storage_error
from finetune_trainer.training.modeling import Hardware, check_method, choose_precision

from tests.unit.trainer.test_config import CONTRACT_EXAMPLE


def test_uri_parsing_and_joining() -> None:
    uri = S3Uri.parse("s3://bucket/a/run-2/")
    assert (uri.bucket, uri.key) == ("bucket", "a/run-2/")
    assert str(uri.join("model", "config.json")) == "s3://bucket/a/run-2/model/config.json"
    assert str(uri.join("model/")) == "s3://bucket/a/run-2/model/"
    assert S3Uri.parse("s3://bucket").prefix == ""
    assert S3Uri.parse("s3://bucket/x/train.jsonl").name == "train.jsonl"
    for bad in ("http://bucket/x", "s3:///key", "bucket/key"):
        with pytest.raises(ConfigInvalid):
            S3Uri.parse(bad)


def client_error(code: str, status: int) -> Any:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("InvalidAccessKeyId", 403, StorageAccessDenied),
        ("SignatureDoesNotMatch", 403, StorageAccessDenied),
        ("AccessDenied", 403, StorageAccessDenied),
        ("", 403, StorageAccessDenied),
        ("NoSuchBucket", 404, StorageNotFound),
        ("NoSuchKey", 404, StorageNotFound),
        ("404", 404, StorageNotFound),
        ("SlowDown", 503, InternalError),
    ],
)
def test_botocore_errors_become_typed_errors(code: str, status: int, expected: type[Exception]) -> None:
    with pytest.raises(expected, match="s3://b/k"):
        raise_storage_error(client_error(code, status), S3Uri("b", "k"), "reading")


def test_missing_credentials_are_access_denied() -> None:
    from botocore.exceptions import NoCredentialsError

    with pytest.raises(StorageAccessDenied, match="no usable S3 credentials"):
        raise_storage_error(NoCredentialsError(), "s3://b/k", "reading")


CPU = Hardware(cuda=False, bf16=False, bitsandbytes=False)
OLD_GPU = Hardware(cuda=True, bf16=False, bitsandbytes=True)
NEW_GPU = Hardware(cuda=True, bf16=True, bitsandbytes=True)


def test_precision_for_the_hardware() -> None:
    assert choose_precision("auto", CPU) == "fp32"
    assert choose_precision("auto", OLD_GPU) == "fp16"
    assert choose_precision("auto", NEW_GPU) == "bf16"
    assert choose_precision("bf16", CPU) == "bf16"
    with pytest.raises(UnsupportedHardware, match="fp16 needs a CUDA GPU"):
        choose_precision("fp16", CPU)
    with pytest.raises(UnsupportedHardware):
        choose_precision("bf16", OLD_GPU)


def test_qlora_needs_gpu_and_bitsandbytes() -> None:
    raw = dict(CONTRACT_EXAMPLE, method={"type": "qlora"})
    config = parse_config(raw)
    with pytest.raises(UnsupportedHardware, match="qlora needs a CUDA GPU"):
        check_method(config, CPU)
    with pytest.raises(UnsupportedHardware, match="bitsandbytes"):
        check_method(config, Hardware(cuda=True, bf16=True, bitsandbytes=False))
    check_method(config, NEW_GPU)
    check_method(parse_config(CONTRACT_EXAMPLE), CPU)


def test_flash_attention_only_on_a_gpu_in_half_precision_where_installed() -> None:
    from finetune_trainer.training.modeling import attention_implementation

    assert attention_implementation(True, "bf16", True) == "flash_attention_2"
    assert attention_implementation(True, "fp16", True) == "flash_attention_2"
    assert attention_implementation(True, "fp32", True) is None  # flash-attn has no fp32 kernels
    assert attention_implementation(True, "bf16", False) is None  # not installed: transformers' SDPA
    assert attention_implementation(False, "bf16", True) is None  # CPU


def test_record_attention_on_cpu_for_causal_llama_only() -> None:
    from finetune_trainer.training import segmented_attention
    from finetune_trainer.training.modeling import attention_implementation

    assert attention_implementation(False, "fp32", False, "llama") == segmented_attention.NAME
    assert attention_implementation(False, "fp32", False, "llama", causal_lm=False) is None  # classifiers: padded
    assert attention_implementation(False, "fp32", False, "gemma2") is None  # sliding windows: transformers' SDPA
    assert attention_implementation(True, "bf16", True, "llama") == "flash_attention_2"
    assert attention_implementation(True, "bf16", False, "llama") is None  # GPU without flash-attn: not measured
