"""The S3 server the cluster runs (or the tests start) is a real one: it stores, lists, and refuses."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.conftest import S3Bucket
from tests.support.s3server import S3Endpoint

pytestmark = pytest.mark.s3


def test_put_get_and_list(s3_bucket: S3Bucket) -> None:
    for key in ("data/a.jsonl", "data/b.jsonl", "models/config.json"):
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=f"content of {key}".encode())
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="data/b.jsonl")["Body"].read()
    assert body == b"content of data/b.jsonl"
    listed = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="data/")
    assert sorted(item["Key"] for item in listed["Contents"]) == ["data/a.jsonl", "data/b.jsonl"]


def test_multipart_upload_round_trips(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    payload = bytes(range(256)) * (4 * 1024 * 12)  # 12 MiB: three 5 MiB-or-less parts
    source = tmp_path / "weights.safetensors"
    source.write_bytes(payload)
    config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    s3_bucket.client.upload_file(str(source), s3_bucket.name, "model/weights.safetensors", Config=config)
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="model/weights.safetensors")
    assert head["ContentLength"] == len(payload)
    assert "-" in head["ETag"], "a multipart upload has an ETag of the form <md5>-<parts>"
    back = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="model/weights.safetensors")["Body"].read()
    assert back == payload


def test_wrong_credentials_are_refused(s3_bucket: S3Bucket, s3_endpoint: S3Endpoint) -> None:
    intruder = boto3.client(
        "s3",
        endpoint_url=s3_endpoint.url,
        aws_access_key_id=s3_endpoint.access_key,
        aws_secret_access_key="not-the-secret",
        region_name=s3_endpoint.region,
    )
    with pytest.raises(ClientError) as refused:
        intruder.list_objects_v2(Bucket=s3_bucket.name)
    assert refused.value.response["Error"]["Code"] in {
        "SignatureDoesNotMatch",
        "AccessDenied",
        "InvalidAccessKeyId",
    }
    stranger = boto3.client(
        "s3",
        endpoint_url=s3_endpoint.url,
        aws_access_key_id="unknown-key",
        aws_secret_access_key="whatever",
        region_name=s3_endpoint.region,
    )
    with pytest.raises(ClientError) as unknown:
        stranger.get_object(Bucket=s3_bucket.name, Key="anything")
    assert unknown.value.response["Error"]["Code"] in {
        "InvalidAccessKeyId",
        "AccessDenied",
        "SignatureDoesNotMatch",
    }
