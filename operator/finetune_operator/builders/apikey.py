"""The generated API key of an endpoint: its Secret, its hash, and the Secret a server pod reads its key from.

Why: an endpoint without a key is possible only when the manifest says so (`allowUnauthenticated: true`). When
the user names no Secret, the operator makes one: 32 random bytes (url-safe text) under the key `apiKey`, in the
owner's namespace, controlled by the owner (garbage-collected with it), created once. The operator never reads a
Secret's data back: it keeps what it needs, the key's SHA-256, in the owner's status when it creates the key (a
shared ModelServer admits each FineTuneJob's key for that job's adapter by this hash), and the key itself goes
only into the Secret it sends (never a log line, status, Event or ConfigMap). The hash is also an annotation on the
Secret, so a status that lost it (a restore without status) is mended from the Secret's metadata, read as
PartialObjectMetadata like every Secret look-up of the operator: the operator needs `create` on Secrets and the
metadata `get` it already had, never `update`, `patch` or `delete`, with which its token could overwrite a
tenant's storage credentials. A hash of 32 random bytes reveals nothing of the key.

Pure but for `generate_key` (the one random draw), so the manifests are checked in unit tests.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from typing import Any

from finetune_operator.api.objects import Manifest

KEY_FIELD = "apiKey"
"""The Secret's data key the servers read (the same as in a user-given apiKeySecret)."""
KEY_BYTES = 32
COMPONENT = "api-key"
ANNOTATION_KEY_SHA256 = "finetune.dev/api-key-sha256"
"""On a generated key's Secret: the key's hex SHA-256, written with it (the operator's copy besides the status)."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def generate_key() -> str:
    """A fresh key: 32 bytes from the OS's CSPRNG, url-safe base64 (43 characters, no padding)."""
    return secrets.token_urlsafe(KEY_BYTES)


def sha256_hex(key: str) -> str:
    """The hex SHA-256 of a key's UTF-8 bytes (what a client sends as `Authorization: Bearer <key>`)."""
    return hashlib.sha256(key.encode()).hexdigest()


def is_sha256(value: Any) -> bool:
    """Whether a value read back from a status is a well-formed hex SHA-256 (64 lower-case hex digits)."""
    return isinstance(value, str) and bool(_SHA256.match(value))


def key_secret(metadata: dict[str, Any], key: str) -> Manifest:
    """The Secret holding a generated key. `metadata` comes from the owner's builder (name, namespace, labels,
    the controller ownerReference); the key's hash is added as an annotation. Created once, never updated."""
    annotations = {**(metadata.get("annotations") or {}), ANNOTATION_KEY_SHA256: sha256_hex(key)}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {**metadata, "annotations": annotations},
        "data": {KEY_FIELD: base64.b64encode(key.encode()).decode()},
    }


def recorded_sha256(secret_metadata: dict[str, Any] | None) -> str:
    """The key hash an existing generated Secret's metadata carries ("" when absent or malformed: someone edited
    it, and the operator cannot know the key without reading it)."""
    annotations = ((secret_metadata or {}).get("metadata") or {}).get("annotations") or {}
    value = annotations.get(ANNOTATION_KEY_SHA256)
    return str(value) if is_sha256(value) else ""
