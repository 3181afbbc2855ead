"""One stable hash of JSON-able content, for every "has this changed?" question the operator asks.

The training and placement hashes of a spec and the spec-hash annotation of the serving bundle must be
computed the same way (canonical JSON: sorted keys, no spaces), or equal content would look changed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_hash(value: Any) -> str:
    """16 hex digits of SHA-256 over the canonical JSON of `value`."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
