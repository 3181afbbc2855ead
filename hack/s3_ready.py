"""Exit 0 once the S3 server at argv[1] answers an authenticated ListBuckets with the cluster's keys."""

import os
import sys

import boto3
from botocore.config import Config

client = boto3.client(
    "s3",
    endpoint_url=sys.argv[1],
    region_name="us-east-1",
    aws_access_key_id=os.environ["FTO_S3_ACCESS_KEY"],
    aws_secret_access_key=os.environ["FTO_S3_SECRET_KEY"],
    config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
)
client.list_buckets()
