"""The one API module: paths, error classification, and "already exists"/"not found" as success.

A fake ApiClient stands in for the server here (and only here): it answers param_serialize/call_api the way
kubernetes>=37 does, with a canned status per (method, path).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from finetune_operator.core.errors import Conflict, NameTaken, NotLeader, PermanentError, TemporaryError
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


JOB_URL = "/apis/batch/v1/namespaces/ns/jobs/j"
DEPLOYMENT_URL = "/apis/apps/v1/namespaces/ns/deployments/d"


def _controlled(uid: str, by: str, namespace: str = "ns") -> dict[str, Any]:
    """An object's metadata as the API returns it, controlled by the object with uid `by` ("" for none)."""
    refs = [{"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "name": "x", "uid": by, "controller": True}]
    return {"metadata": {"name": "j", "namespace": namespace, "uid": uid, "ownerReferences": refs if by else []}}


def _child(kind: str = "Job", name: str = "j") -> dict[str, Any]:
    api_version = {"Job": "batch/v1", "Deployment": "apps/v1"}[kind]
    owner = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "name": "x", "uid": "u1", "controller": True}
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "ownerReferences": [owner]},
    }


def test_create_treats_already_exists_as_done() -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ns"}}
    api = FakeApi({("POST", "/apis/batch/v1/namespaces/ns/jobs"): (409, {"message": "exists"})})
    assert Kube(api).create(job) is None
    assert api.calls[0][4] == [("fieldManager", "finetune-operator")]


def test_create_finding_our_own_object_is_done_and_another_owners_is_name_taken() -> None:
    exists = ("POST", "/apis/batch/v1/namespaces/ns/jobs")
    api = FakeApi({exists: (409, {}), ("GET", JOB_URL): (200, _controlled("j-uid", "u1"))})
    assert Kube(api).create(_child()) is None
    assert "PartialObjectMetadata" in api.calls[1][3]["Accept"]
    for foreign in (_controlled("j-uid", "someone-else"), _controlled("j-uid", "")):
        api = FakeApi({exists: (409, {}), ("GET", JOB_URL): (200, foreign)})
        with pytest.raises(NameTaken, match="Job ns/j exists and is not ours"):
            Kube(api).create(_child())


def test_create_invalid_is_permanent() -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ns"}}
    api = FakeApi({("POST", "/apis/batch/v1/namespaces/ns/jobs"): (422, {"message": "spec.template: bad"})})
    with pytest.raises(PermanentError, match=r"spec\.template: bad"):
        Kube(api).create(job)


def test_delete_of_missing_object_is_false() -> None:
    api = FakeApi({("DELETE", JOB_URL): (404, {})})
    assert Kube(api).delete("batch/v1", "Job", "ns", "j", owner="u1", uid="j-uid") is False
    assert api.calls[0][2]["propagationPolicy"] == "Background"


def test_delete_carries_the_observed_uid_as_a_precondition_and_a_reused_name_is_left_alone() -> None:
    api = FakeApi({})
    assert Kube(api).delete("batch/v1", "Job", "ns", "j", owner="u1", uid="j-uid", foreground=True) is True
    assert api.calls[0][:2] == ("DELETE", JOB_URL)
    assert api.calls[0][2]["propagationPolicy"] == "Foreground"
    assert api.calls[0][2]["preconditions"] == {"uid": "j-uid"}
    # 409: the precondition failed, the name holds another object now; ours is gone
    api = FakeApi({("DELETE", JOB_URL): (409, {"message": "Precondition failed: UID in precondition"})})
    assert Kube(api).delete("batch/v1", "Job", "ns", "j", owner="u1", uid="j-uid") is False


def test_delete_by_name_reads_the_controller_first_and_never_deletes_another_owners_object() -> None:
    api = FakeApi({("GET", JOB_URL): (200, _controlled("theirs", "someone-else"))})
    assert Kube(api).delete("batch/v1", "Job", "ns", "j", owner="u1") is False
    assert [c[0] for c in api.calls] == ["GET"]
    api = FakeApi({("GET", JOB_URL): (200, _controlled("ours", "u1"))})
    assert Kube(api).delete("batch/v1", "Job", "ns", "j", owner="u1") is True
    assert api.calls[1][0] == "DELETE" and api.calls[1][2]["preconditions"] == {"uid": "ours"}
    api = FakeApi({("GET", JOB_URL): (404, {})})
    assert Kube(api).delete("batch/v1", "Job", "ns", "j", owner="u1") is False
    assert [c[0] for c in api.calls] == ["GET"]


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


def test_apply_creates_without_force_when_absent() -> None:
    api = FakeApi({("GET", DEPLOYMENT_URL): (404, {})})
    Kube(api).apply(_child("Deployment", "d"))
    method, url, body, headers, query = api.calls[1]
    assert (method, url) == ("PATCH", DEPLOYMENT_URL)
    assert headers["Content-Type"] == "application/apply-patch+yaml" and ("force", "false") in query
    assert "uid" not in body["metadata"]


def test_apply_forces_only_over_our_own_object_and_binds_to_its_uid() -> None:
    api = FakeApi({("GET", DEPLOYMENT_URL): (200, _controlled("d-uid", "u1"))})
    Kube(api).apply(_child("Deployment", "d"))
    _, _, body, _, query = api.calls[1]
    assert ("force", "true") in query and body["metadata"]["uid"] == "d-uid"


def test_a_write_bound_to_a_uid_that_changed_is_a_conflict_not_a_failure() -> None:
    immutable = (
        422,
        {"message": 'Deployment "d" is invalid: metadata.uid: Invalid value: "d-uid": field is immutable'},
    )
    api = FakeApi({("GET", DEPLOYMENT_URL): (200, _controlled("d-uid", "u1")), ("PATCH", DEPLOYMENT_URL): immutable})
    with pytest.raises(Conflict, match="replaced since it was read"):
        Kube(api).apply(_child("Deployment", "d"))
    url = "/apis/finetune.dev/v1alpha1/namespaces/ns/finetunejobs/t"
    api = FakeApi({("PATCH", url): (422, {"message": "metadata.uid: field is immutable"})})
    with pytest.raises(Conflict):
        Kube(api).merge_patch("finetune.dev/v1alpha1", "FineTuneJob", "ns", "t", {"spec": {}}, uid="t-uid")
    api = FakeApi({("PATCH", url): (422, {"message": "spec.suspend: bad"})})
    with pytest.raises(PermanentError):  # any other refusal stays what it is
        Kube(api).merge_patch("finetune.dev/v1alpha1", "FineTuneJob", "ns", "t", {"spec": {}}, uid="t-uid")


def test_apply_over_another_owners_object_is_name_taken_and_sends_nothing() -> None:
    for foreign in (_controlled("d-uid", "someone-else"), _controlled("d-uid", ""), _controlled("d-uid", "u1", "b")):
        api = FakeApi({("GET", DEPLOYMENT_URL): (200, foreign)})
        with pytest.raises(NameTaken):
            Kube(api).apply(_child("Deployment", "d"))
        assert [c[0] for c in api.calls] == ["GET"]


def test_merge_patch_binds_to_uid_and_resource_version() -> None:
    api = FakeApi({})
    url = "/apis/finetune.dev/v1alpha1/namespaces/ns/finetunejobs/t"
    patch = {"metadata": {"annotations": {"a": "b"}}, "spec": {"suspend": True}}
    Kube(api).merge_patch("finetune.dev/v1alpha1", "FineTuneJob", "ns", "t", patch, uid="t-uid", resource_version="7")
    assert api.calls[0][:3] == (
        "PATCH",
        url,
        {"metadata": {"annotations": {"a": "b"}, "uid": "t-uid", "resourceVersion": "7"}, "spec": {"suspend": True}},
    )


def test_event_failure_never_fails_the_reconcile() -> None:
    from finetune_operator.api.objects import Owner

    api = FakeApi({("POST", "/api/v1/namespaces/ns/events"): (500, {})})
    Kube(api).post_event(Owner("ns", "x", "u"), "Normal", "Training", "run 1")


def test_replace_owned_puts_only_over_our_own_object_bound_to_its_uid_and_version() -> None:
    url = "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles/r"
    owner = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "name": "x", "uid": "u1", "controller": True}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "r", "namespace": "ns", "ownerReferences": [owner]},
        "rules": [],
    }
    ours = _controlled("r-uid", "u1")
    ours["metadata"]["resourceVersion"] = "41"
    api = FakeApi({("GET", url): (200, ours)})
    Kube(api).replace_owned(role)
    method, called, body, _, _ = api.calls[1]
    assert (method, called) == ("PUT", url)
    assert (body["metadata"]["uid"], body["metadata"]["resourceVersion"]) == ("r-uid", "41")
    for foreign in (_controlled("r-uid", "someone-else"), _controlled("r-uid", "")):
        api = FakeApi({("GET", url): (200, foreign)})
        with pytest.raises(NameTaken):
            Kube(api).replace_owned(role)
        assert [c[0] for c in api.calls] == ["GET"]
    with pytest.raises(Conflict):  # gone since it was read: read again
        Kube(FakeApi({("GET", url): (404, {})})).replace_owned(role)


class Refuse:
    """A guard that refuses every write (a stale leader's fence), recording what it was asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, what: str) -> None:
        self.asked.append(what)
        raise NotLeader(f"refused to {what}")


def test_every_write_asks_the_guard_first_and_a_refused_write_sends_nothing() -> None:
    from finetune_operator.api.objects import Owner

    writes = {
        "create Job ns/j": lambda kube: kube.create(_child()),
        "apply Deployment ns/d": lambda kube: kube.apply(_child("Deployment", "d")),
        "update Job ns/j": lambda kube: kube.replace(_child()),
        "update Role ns/r": lambda kube: kube.replace_owned(
            {
                **_child(),
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {**_child()["metadata"], "name": "r"},
            }
        ),
        "delete Job ns/j": lambda kube: kube.delete("batch/v1", "Job", "ns", "j", owner="u1", uid="j-uid"),
        "patch Job ns/j": lambda kube: kube.set_job_suspend("ns", "j", True),
        "patch FineTuneJob ns/t": lambda kube: kube.merge_patch("finetune.dev/v1alpha1", "FineTuneJob", "ns", "t", {}),
        "patch FineTuneJob ns/x status": lambda kube: kube.patch_status("ns", "x", {"phase": "Running"}, "7"),
        "post an Event on FineTuneJob ns/x": lambda kube: kube.post_event(Owner("ns", "x", "u"), "Normal", "R", "m"),
    }
    for what, write in writes.items():
        role = {
            **_controlled("r-uid", "u1"),
            "metadata": {**_controlled("r-uid", "u1")["metadata"], "resourceVersion": "4"},
        }
        reads = {
            ("GET", DEPLOYMENT_URL): (404, {}),
            ("GET", "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles/r"): (200, role),
        }
        api, guard = FakeApi(reads), Refuse()
        with pytest.raises(NotLeader):
            write(Kube(api, guard=guard))
        assert guard.asked == [what]
        assert [call[0] for call in api.calls if call[0] != "GET"] == [], what


def test_reads_never_ask_the_guard_and_no_guard_lets_writes_through() -> None:
    guard = Refuse()
    kube = Kube(FakeApi({}), guard=guard)
    kube.get("batch/v1", "Job", "ns", "j")
    kube.list("batch/v1", "Job", "ns", "a=b")
    kube.get_metadata("batch/v1", "Job", "ns", "j")
    kube.exists_metadata("v1", "Secret", "ns", "s")
    assert guard.asked == []
    api = FakeApi({})
    Kube(api).patch_status("ns", "x", {"phase": "Running"}, "7")  # no election: no guard
    assert [call[0] for call in api.calls] == ["PATCH"]
