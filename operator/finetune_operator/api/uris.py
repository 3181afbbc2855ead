"""The typed specs' check of object-storage URIs: no empty (`//`), `.` or `..` segment after the scheme.

Why here as well as in the CRD's rules: S3 stores such keys verbatim, and a key with `..` becomes a path outside
its folder wherever it is joined onto one (the trainer refuses those keys too: trainer core/paths.py). The
CRD's CEL rules refuse them at admission; this model refuses them in whatever reaches the operator without that
schema (an object stored before the rule existed, a sweep's template), naming the field like every other
refusal.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

SCHEMES = ("s3://", "hf://")
"""Object storage, and the Hugging Face Hub (`hf://org/name`, `hf://datasets/org/name/path`: docs/hub.md), whose
paths the trainer copies into object storage under the same names, so they are held to the same rule."""


def unsafe_segment(uri: str) -> str | None:
    """Why `uri` (s3://bucket/key, hf://org/name/path or a local path) has a segment that could leave its
    folder, or None."""
    scheme = next((s for s in SCHEMES if uri.startswith(s)), "")
    rest = uri[len(scheme) :]
    segments = rest.split("/")
    inner = segments[1:-1] if not scheme else segments[:-1]
    if "" in inner:
        return "an empty segment ('//')"
    if "." in segments or ".." in segments:
        return "a '.' or '..' segment"
    return None


def check_uri(uri: str) -> str:
    reason = unsafe_segment(uri)
    if reason is not None:
        raise ValueError(f"{uri!r} holds {reason}: object keys with those are refused")
    return uri


SafeUri = Annotated[str, AfterValidator(check_uri)]
"""A URI field of a spec: any string the CRD's pattern admits, minus `//`, `.` and `..` segments."""
