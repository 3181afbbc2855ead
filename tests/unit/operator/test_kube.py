"""The one API module: paths, error classification, and "already exists"/"not found" as success.

A fake ApiClient stands in for the server here (and only here): it answers param_serialize/call_api the way
kubernetes>=37 does, with a canned status per (method, path).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from finetune_operator.core.errors import Conflict, PermanentError, TemporaryError
from finetune_operator.core.kube import Kube, classify, path
from kubernetes.client.exceptions import ApiException


class _Response:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.reason, self.data = status, "reason", json.dumps(body).encode()
        self.headers: dict[str, str] = {}

    def read(self) -> bytes:
        return self.data


class FakeApi:
    def __init__(self, answers: dict[tuple[str, str], tuple[int, dict[str, Any]]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, Any, dict[str, str], list[tuple[str, str]]]] = []

    def param_serialize(
        self,
        *,
        method: str,
        resource_path: str,
        query_params: list[tuple[str, str]],
        header_params: dict[str, str],
        body: Any,
        auth_settings: list[str],
    ) -> tuple[Any, ...]:
        self.calls.append((method, resource_path, body, header_params, query_params))
        return (method, resource_path)

    def call_api(self, method: str, url: str, _request_timeout: Any = None) -> _Response:
        status, body = self.answers.get((method, url), (200, {"ok": True}))
        return _Response(status, body)


def test_paths() -> None:
    assert path("v1", "ConfigMap", "ns", "c") == "/api/v1/namespaces/ns/configmaps/c"
    assert path("batch/v1", "Job", "ns") == "/apis/batch/v1/namespaces/ns/jobs"
    assert path("finetune.dev/v1alpha1", "FineTuneJob", "ns", "x") == (
        "/apis/finetune.dev/v1alpha1/namespaces/ns/finetunejobs/x"
    )


@pytest.mark.parametrize(
    ("status", "family"),
    [
        (400, PermanentError),
        (422, PermanentError),
        (409, Conflict),
        (429, TemporaryError),
        (403, TemporaryError),
        (500, TemporaryError),
        (503, TemporaryError),
    ],
)
def test_classification(status: int, family: type[Exception]) -> None:
    error = ApiException(status=status, reason="r")
    error.body = json.dumps({"message": "details here"})
    classified = classify(error, "create Job ns/x")
    assert isinstance(classified, family) and "details here" in str(classified)


def test_create_treats_already_exists_as_done() -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ns"}}
    api = FakeApi({("POST", "/apis/batch/v1/namespaces/ns/jobs"): (409, {"message": "exists"})})
    assert Kube(api).create(job) is None
    assert api.calls[0][4] == [("fieldManager", "finetune-operator")]


def test_create_invalid_is_permanent() -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ns"}}
    api = FakeApi({("POST", "/apis/batch/v1/namespaces/ns/jobs"): (422, {"message": "spec.template: bad"})})
    with pytest.raises(PermanentError, match=r"spec\.template: bad"):
        Kube(api).create(job)


def test_delete_of_missing_object_is_false() -> None:
    api = FakeApi({("DELETE", "/apis/batch/v1/namespaces/ns/jobs/j"): (404, {})})
    assert Kube(api).delete("batch/v1", "Job", "ns", "j") is False
    assert api.calls[0][2]["propagationPolicy"] == "Background"


def test_foreground_delete_asks_for_foreground_propagation() -> None:
    api = FakeApi({})
    assert Kube(api).delete("batch/v1", "Job", "ns", "j", foreground=True) is True
    assert api.calls[0][:2] == ("DELETE", "/apis/batch/v1/namespaces/ns/jobs/j")
    assert api.calls[0][2]["propagationPolicy"] == "Foreground"


def test_status_patch_is_conditional_on_resource_version() -> None:
    url = "/apis/finetune.dev/v1alpha1/namespaces/ns/finetunejobs/x/status"
    api = FakeApi({("PATCH", url): (409, {"message": "the object has been modified"})})
    with pytest.raises(Conflict):
        Kube(api).patch_status("ns", "x", {"phase": "Training"}, "42")
    _, _, body, headers, _ = api.calls[0]
    assert body == {"metadata": {"resourceVersion": "42"}, "status": {"phase": "Training"}}
    assert headers["Content-Type"] == "application/merge-patch+json"


def test_secret_existence_reads_metadata_only() -> None:
    api = FakeApi({("GET", "/api/v1/namespaces/ns/secrets/gone"): (404, {})})
    kube = Kube(api)
    assert kube.exists_metadata("v1", "Secret", "ns", "there") is True
    assert kube.exists_metadata("v1", "Secret", "ns", "gone") is False
    assert "PartialObjectMetadata" in api.calls[0][3]["Accept"]


def test_apply_is_server_side_apply_with_force() -> None:
    api = FakeApi({})
    Kube(api).apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "ns"}})
    method, url, _, headers, query = api.calls[0]
    assert (method, url) == ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/d")
    assert headers["Content-Type"] == "application/apply-patch+yaml" and ("force", "true") in query


def test_event_failure_never_fails_the_reconcile() -> None:
    from finetune_operator.api.objects import Owner

    api = FakeApi({("POST", "/api/v1/namespaces/ns/events"): (500, {})})
    Kube(api).post_event(Owner("ns", "x", "u"), "Normal", "Training", "run 1")
