"""The operator's memory of what it watches: FineTuneJob bodies and compact observations of their children.

Why: a reconcile that reads its inputs from memory costs the API server nothing; only changes go out.
Watch events (from kopf) fill it; reconcile threads read it, so every access takes one lock. Children are
filed by the uid of the FineTuneJob they belong to (label finetune.dev/job-uid), which tells apart a
deleted and re-created job of the same name.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from finetune_operator.core.observed import DeploymentObs, JobObs, PodObs

Key = tuple[str, str]  # (namespace, name)


@dataclass
class _Children:
    jobs: dict[str, JobObs] = field(default_factory=dict)
    pods: dict[str, PodObs] = field(default_factory=dict)
    deployment: DeploymentObs | None = None


@dataclass(frozen=True)
class View:
    """A consistent copy of one FineTuneJob and its children, for one reconcile."""

    body: dict[str, Any]
    jobs: tuple[JobObs, ...]
    pods: tuple[PodObs, ...]
    deployment: DeploymentObs | None


def _newer_or_equal(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Whether `new` is at least as recent as `old`, by resourceVersion when both are numbers (etcd's are)."""
    if old is None:
        return True
    try:
        return int(new["metadata"]["resourceVersion"]) >= int(old["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return True


class Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[Key, dict[str, Any]] = {}
        self._uids: dict[str, Key] = {}
        self._children: dict[str, _Children] = {}
        self._servers: dict[Key, dict[str, Any]] = {}  # ModelServer bodies (shared serving)

    def put_body(self, body: dict[str, Any]) -> Key:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if _newer_or_equal(body, self._bodies.get(key)):
                self._bodies[key] = copy.deepcopy(body)
                self._uids[meta["uid"]] = key
        return key

    def forget_body(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            self._bodies.pop((namespace, name), None)
            self._uids.pop(uid, None)
            self._children.pop(uid, None)

    def key_of(self, uid: str) -> Key | None:
        with self._lock:
            return self._uids.get(uid)

    def all_keys(self) -> list[Key]:
        with self._lock:
            return list(self._bodies)

    def _kids(self, uid: str) -> _Children:
        return self._children.setdefault(uid, _Children())

    def put_job(self, uid: str, job: JobObs, *, only_if_absent: bool = False) -> None:
        with self._lock:
            jobs = self._kids(uid).jobs
            if not (only_if_absent and job.name in jobs):
                jobs[job.name] = job

    def mark_job_deleting(self, uid: str, name: str) -> None:
        """A foreground deletion was requested: the Job lingers until its pods are gone, and no pass may
        create its successor (same name) before the watch reports it deleted."""
        with self._lock:
            jobs = self._kids(uid).jobs
            if name in jobs:
                jobs[name] = replace(jobs[name], deleting=True)

    def forget_job(self, uid: str, name: str) -> None:
        with self._lock:
            self._kids(uid).jobs.pop(name, None)

    def put_pod(self, uid: str, pod: PodObs) -> None:
        with self._lock:
            self._kids(uid).pods[pod.name] = pod

    def forget_pod(self, uid: str, name: str) -> None:
        with self._lock:
            self._kids(uid).pods.pop(name, None)

    def put_deployment(self, uid: str, deployment: DeploymentObs | None) -> None:
        with self._lock:
            self._kids(uid).deployment = deployment

    def put_server(self, body: dict[str, Any]) -> Key:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if _newer_or_equal(body, self._servers.get(key)):
                self._servers[key] = copy.deepcopy(body)
        return key

    def forget_server(self, namespace: str, name: str) -> None:
        with self._lock:
            self._servers.pop((namespace, name), None)

    def server(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            body = self._servers.get(key)
            return copy.deepcopy(body) if body is not None else None

    def server_keys(self) -> list[Key]:
        with self._lock:
            return list(self._servers)

    def bodies_naming(self, server: Key, refer: Callable[[dict[str, Any]], Key | None]) -> list[dict[str, Any]]:
        """The FineTuneJob bodies whose serving.server names `server` (`refer` reads a body's reference)."""
        with self._lock:
            return [copy.deepcopy(b) for b in self._bodies.values() if refer(b) == server]

    def view(self, key: Key) -> View | None:
        with self._lock:
            body = self._bodies.get(key)
            if body is None:
                return None
            kids = self._children.get(body["metadata"]["uid"], _Children())
            return View(copy.deepcopy(body), tuple(kids.jobs.values()), tuple(kids.pods.values()), kids.deployment)
