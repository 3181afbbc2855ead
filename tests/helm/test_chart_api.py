"""The chart's OpenAI fine-tuning API (api.enabled), rendered with `helm template`: off by default, and when on, a
ServiceAccount whose ClusterRole holds exactly TokenReview, SubjectAccessReview and impersonation, and pods that
pass the restricted Pod Security profile. tests/integration/test_finetuning_api_files.py runs the service bound to
this very ClusterRole against a real API server.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from .chart import CHART, helm, render, set_args
from .test_chart_rbac import _by_kind_and_place

API = {"api.enabled": "true", "api.files.bucket": "files"}
API_RULES = [
    ("authentication.k8s.io", ("tokenreviews",), ("create",), ()),
    ("authorization.k8s.io", ("subjectaccessreviews",), ("create",), ()),
    ("", ("users", "groups", "serviceaccounts"), ("impersonate",), ()),
]


def _api_docs(values: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return [
        d
        for d in render("r", "ops", {**API, **(values or {})})
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "api"
    ]


def test_off_by_default() -> None:
    assert not [
        d for d in render("r", "ops") if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "api"
    ]


def test_the_api_holds_only_token_review_access_review_and_impersonation() -> None:
    docs = render("r", "ops", API)
    places = _by_kind_and_place(docs)
    assert places[("ClusterRole", "", "r-finetune-operator-api")] == API_RULES
    # the operator's own roles are those of an install without the API
    assert {k: v for k, v in places.items() if not k[2].endswith("-api")} == _by_kind_and_place(render("r", "ops"))
    # impersonation nowhere else
    holders = [d["metadata"]["name"] for d in docs if any("impersonate" in r["verbs"] for r in d.get("rules") or [])]
    assert holders == ["r-finetune-operator-api"]
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"].endswith("-api")]
    assert binding["roleRef"]["name"] == "r-finetune-operator-api"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "r-finetune-operator-api", "namespace": "ops"}]


def test_every_api_rule_says_why() -> None:
    lines = helm("template", "r", str(CHART), "--namespace", "ops", *set_args(API), "-s", "templates/api.yaml")
    text = lines.stdout.splitlines()
    rules = [i for i, line in enumerate(text) if re.match(r"^- apiGroups:", line)]
    assert len(rules) == len(API_RULES)
    assert all(text[i - 1].lstrip().startswith("#") for i in rules)


def test_deployment_is_two_restricted_replicas_configured_from_values() -> None:
    values = {"api.files.endpoint": "http://s3:8333", "api.files.maxUploadBytes": "1048576", "trainer.image": "t:1"}
    docs = _api_docs(values)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "r-finetune-operator-api"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == "t:1"
    assert container["command"] == ["python", "-m", "finetune_trainer.finetuning_api"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FTO_API_BUCKET"] == "files" and env["FTO_API_S3_ENDPOINT"] == "http://s3:8333"
    assert env["FTO_API_MAX_UPLOAD_BYTES"] == "1048576" and env["FTO_API_CREDENTIALS_SECRET"] == "finetune-storage"
    assert env["FTO_API_S3_ETAG_MD5"] == "on"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["FTO_API_CATALOG"] == mounts["models"] + "/models.yaml"
    (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
    assert tmp["emptyDir"]["sizeLimit"] >= 2 * 1048576
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert not [d for d in docs if d["kind"] == "Ingress"]


def test_a_store_whose_etags_are_not_md5s_is_said_once_for_every_api_job() -> None:
    (deployment,) = [d for d in _api_docs({"api.files.etagIsMd5": "false"}) if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e["value"] for e in container["env"]}["FTO_API_S3_ETAG_MD5"] == "off"
    not_a_boolean = helm("template", "r", str(CHART), *set_args(API), "--set-string", "api.files.etagIsMd5=no",
                         check=False)  # fmt: skip
    assert not_a_boolean.returncode != 0 and "etagIsMd5" in not_a_boolean.stderr


def test_models_catalog_and_ingress() -> None:
    models = '[{"name":"qwen-0.5b","baseModel":"s3://models/qwen/"}]'
    out = helm(
        "template",
        "r",
        str(CHART),
        "--namespace",
        "ops",
        *set_args({**API, "api.ingress.enabled": "true", "api.ingress.host": "ft.example.com"}),
        "--set-json",
        f"api.models={models}",
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-api-models")]
    assert yaml.safe_load(config_map["data"]["models.yaml"]) == {
        "models": [{"name": "qwen-0.5b", "baseModel": "s3://models/qwen/"}]
    }
    (ingress,) = [d for d in docs if d["kind"] == "Ingress"]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "ft.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == "r-finetune-operator-api"


def test_missing_bucket_and_unknown_keys_are_refused() -> None:
    missing = helm("template", "r", str(CHART), *set_args({"api.enabled": "true"}), check=False)
    assert missing.returncode != 0 and "api.files.bucket is required" in missing.stderr
    typo = helm("template", "r", str(CHART), *set_args({**API, "api.file.bucket": "x"}), check=False)
    assert typo.returncode != 0


def test_more_env_is_passed_and_the_charts_own_names_are_refused() -> None:
    values = {"api.env[0].name": "HTTP_PROXY", "api.env[0].value": "http://proxy:3128", "api.env[1].name": "NO_PROXY",
              "api.env[1].value": "10.0.0.1"}  # fmt: skip
    (deployment,) = [d for d in _api_docs(values) if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = container["env"]
    assert env[-2:] == [{"name": "HTTP_PROXY", "value": "http://proxy:3128"}, {"name": "NO_PROXY", "value": "10.0.0.1"}]
    assert len({e["name"] for e in env}) == len(env)
    for name in ("FTO_API_BUCKET", "HOME"):
        values = {**API, "api.env[0].name": name, "api.env[0].value": "x"}
        refused = helm("template", "r", str(CHART), *set_args(values), check=False)
        assert refused.returncode != 0 and f"api.env: {name} is set by the chart" in refused.stderr
    unknown = helm("template", "r", str(CHART), *set_args({**API, "api.env[0].name": "A", "api.env[0].vaule": "x"}),
                   check=False)  # fmt: skip
    assert unknown.returncode != 0 and "vaule" in unknown.stderr
