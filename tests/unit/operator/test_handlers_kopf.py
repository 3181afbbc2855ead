"""The kopf glue registers only event handlers, which is what lets it skip kopf's diff base (handlers.NoDiffBase):
a create, update, resume or delete handler added later would read a diff base that is never built."""

from __future__ import annotations

import kopf
from finetune_operator import handlers


def test_only_event_handlers_are_registered() -> None:
    registry = kopf.get_default_registry()
    watching = registry._watching.get_all_handlers()
    assert {h.id for h in watching} >= {"finetunejobs-event", "pods-event", "jobs-event"}
    assert not registry._changing.get_all_handlers(), "a changing handler needs kopf's diff base back"
    assert not registry._spawning.get_all_handlers()


def test_the_diff_base_is_neither_built_nor_stored() -> None:
    storage = handlers.NoDiffBase()
    body = kopf.Body({"metadata": {"name": "x", "annotations": {"a": "b"}}, "spec": {"k": 1}, "status": {}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    assert not patch  # nothing written into the FineTuneJob
