"""Put the quickstart's inputs into the local cluster's S3: a support-chat dataset and a tiny base model.

Why a model made here: nothing may come from a model hub, and the demo must finish in minutes on 2 CPU cores.
So the "base model" is a tiny Llama whose tokenizer is trained on the domain's text and which is briefly
pre-trained on plain support text (not chats); the FineTuneJob then teaches it the chat format with LoRA,
which is exactly the job a real user gives a real base model.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
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
GREETINGS = ["", "Hello. ", "Hi there. ", "Good morning. ", "Hey. "]
SYSTEM = "You are the support assistant of an online shop. Answer briefly."


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


def plain_text(records: list[dict[str, Any]]) -> list[str]:
    return [" ".join(m["content"] for m in r["messages"]) for r in records]


def build_base_model(folder: Path, texts: list[str], steps: int, seed: int) -> None:
    """Train a tokenizer on `texts`, then pre-train a tiny Llama on them for `steps` steps, and save both."""
    import torch
    from finetune_trainer.devtools import tiny
    from transformers import AutoModelForCausalLM

    tokenizer = tiny.train_tokenizer(texts, vocab_size=600)
    tiny.build_causal_lm(folder, tokenizer, seed=seed, hidden_size=96, num_hidden_layers=2)

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        batch = tokenizer(rng.sample(texts, 16), return_tensors="pt", padding=True, truncation=True, max_length=96)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(f"[seed] base model pre-trained {steps} steps, last loss {loss.item():.2f}")
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))


def main() -> None:
    import boto3

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--access-key", required=True)
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    s3 = boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        aws_access_key_id=args.access_key,
        aws_secret_access_key=args.secret_key,
        region_name="us-east-1",
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in ("models", "data", "artifacts"):
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)

    records = support_chats(args.records, args.seed)
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    s3.put_object(Bucket="data", Key="support/train.jsonl", Body=body)
    print(f"[seed] s3://data/support/train.jsonl: {len(records)} chats")

    marker = "tiny-llama/config.json"
    if s3.list_objects_v2(Bucket="models", Prefix=marker).get("KeyCount", 0):
        print("[seed] s3://models/tiny-llama/ already there")
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny-llama"
        texts = plain_text(support_chats(2000, args.seed + 1))
        build_base_model(folder, texts, args.pretrain_steps, args.seed)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            s3.upload_file(str(path), "models", f"tiny-llama/{path.relative_to(folder).as_posix()}")
    print("[seed] s3://models/tiny-llama/: tokenizer + tiny Llama (config, safetensors)")


if __name__ == "__main__":
    main()
