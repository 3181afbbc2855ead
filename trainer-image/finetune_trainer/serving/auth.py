"""Who may reach which model on a server: the admin key, and per-tenant keys from a shared server's adapters.json.

Why one pure module: our own server (`server.guard`) and the gateway in front of vLLM (`gateway`) must take the
same decision, and a decision about keys is easier to trust when it is a function tested from a table.

The rules (docs/security.md, "Per-tenant keys"):
- the server's own key (the API key Secret, `FTO_API_KEY`) is the admin key: it reaches every model;
- each entry of adapters.json (the operator's desired list) may carry `keySha256`, the hex sha256 of the bearer
  key of that entry's tenant; a bearer whose sha256 equals it reaches the models of the entries that name that
  digest, and no other: asking for another model answers exactly as for a model that does not exist (404
  `model_not_found`), so a tenant learns nothing of the others, and /v1/models lists only its own;
- any other bearer, or none, is refused (401) before the body is read;
- a server without an admin key has authentication off (the manifest's explicit opt-out): everyone reaches all.
Digests are compared with `hmac.compare_digest`, every entry each time, so the time taken does not say which
tenant's digest was close.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

KEY_FIELD = "keySha256"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def key_sha256(key: str) -> str:
    """The hex digest adapters.json carries for a bearer key (what the operator writes for a tenant)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Access:
    """What one authenticated caller may reach: every model (`models` None: the admin key, or auth off) or those."""

    models: frozenset[str] | None

    @property
    def admin(self) -> bool:
        return self.models is None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


ALL = Access(None)
NOTHING = Access(frozenset())


@dataclass(frozen=True)
class KeyMap:
    """The admin key and each tenant digest's models; build with `from_adapters`."""

    admin_key: str | None
    tenants: Mapping[bytes, frozenset[str]] = field(default_factory=dict)
    """sha256 digest (raw bytes) -> the models it reaches."""
    problems: tuple[str, ...] = ()
    """Entries whose `keySha256` was not usable (they grant nothing), each naming the entry and the field."""

    @classmethod
    def from_adapters(
        cls, admin_key: str | None, document: Mapping[str, Any] | None, reserved: Iterable[str] = ()
    ) -> KeyMap:
        """The map of a server with admin key `admin_key` and desired list `document` (adapters.json, or None: a
        server of one model). `reserved`: names no tenant key may reach even when an entry names them (the
        server's base model: an adapter cannot take its name, so such an entry grants nothing)."""
        tenants: dict[bytes, set[str]] = {}
        problems: list[str] = []
        blocked = frozenset(reserved)
        adapters = (document or {}).get("adapters") or []
        if not isinstance(adapters, list):
            return cls(admin_key, {}, ("adapters.json: 'adapters' is not a list: no tenant key is accepted",))
        for index, entry in enumerate(adapters):
            if not isinstance(entry, Mapping) or entry.get(KEY_FIELD) in (None, ""):
                continue  # an adapter without a tenant key: the admin key alone reaches it
            digest, name = entry.get(KEY_FIELD), entry.get("name")
            where = f"adapters.json: adapters[{index}]"
            if not isinstance(name, str) or not name:
                problems.append(f"{where}.name: missing, so its {KEY_FIELD} grants nothing")
            elif not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
                problems.append(f"{where}.{KEY_FIELD}: not 64 hex digits (a sha256), so {name!r} has no tenant key")
            elif name in blocked:
                problems.append(f"{where}.name: {name!r} is the server's own model, which no tenant key reaches")
            else:
                tenants.setdefault(bytes.fromhex(digest.lower()), set()).add(name)
        return cls(admin_key, {d: frozenset(models) for d, models in tenants.items()}, tuple(problems))

    @classmethod
    def from_adapters_text(cls, admin_key: str | None, text: str, reserved: Iterable[str] = ()) -> KeyMap:
        """`from_adapters` over the file's text; text that is not a JSON object is a ValueError naming the file."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"adapters.json is not JSON: {error}") from error
        if not isinstance(document, dict):
            raise ValueError("adapters.json is not a JSON object")
        return cls.from_adapters(admin_key, document, reserved)

    @property
    def open(self) -> bool:
        """No admin key: authentication is off (the manifest opted out), every caller reaches every model."""
        return self.admin_key is None

    def authenticate(self, bearer: str | None) -> Access | None:
        """The caller's access from its bearer key, or None (refuse with 401)."""
        if self.open:
            return ALL
        if not bearer:
            return None
        if hmac.compare_digest(bearer.encode(), self.admin_key.encode()):  # type: ignore[union-attr]
            return ALL
        digest = hashlib.sha256(bearer.encode()).digest()
        found: frozenset[str] | None = None
        for known, models in self.tenants.items():  # every entry, a match or not
            if hmac.compare_digest(digest, known):
                found = models
        return None if found is None else Access(found)


Decision = Literal["allowed", "unauthenticated", "not_found"]


def decide(keys: KeyMap, bearer: str | None, model: str) -> Decision:
    """The whole rule for one request: 401 (`unauthenticated`), 404 (`not_found`, the same answer as a model that
    does not exist) or `allowed`. The servers take it in two steps (the key before the body, the model after)."""
    access = keys.authenticate(bearer)
    if access is None:
        return "unauthenticated"
    return "allowed" if access.allows(model) else "not_found"


def bearer_of(authorization: str) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, or None (absent, another scheme, empty)."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
