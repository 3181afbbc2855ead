"""The project's CRDs installed (or replaced) on a cluster, waiting until the API server serves them.

One home for what the cluster-tier fixtures, the e2e tests that run the operator as a process (no chart, which
would install them) and `bench/chaos.py` all need first: a fresh cluster has no FineTuneJob kind, and the first
create after a CRD appears can miss it until discovery catches up.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tests.support.waiting import wait_for

CRDS = Path(__file__).resolve().parents[2] / "crds"
# what `python -m finetune_operator` watches (FineTuneSweeps too, but it runs without their CRD)
OPERATOR_CRDS = ("modelserver.yaml", "finetunejob.yaml")


def install_crd(api_client: Any, path: Path) -> str:
    """Create or replace the CRD in `path`; return its name once Established."""
    return apply_crd(api_client, yaml.safe_load(path.read_text()))


def apply_crd(api_client: Any, body: dict[str, Any]) -> str:
    """Create or replace the CRD `body` (a parsed manifest); return its name once Established and served."""
    from kubernetes import client

    api = client.ApiextensionsV1Api(api_client)
    name = body["metadata"]["name"]
    try:
        api.create_custom_resource_definition(body)
    except client.ApiException as error:
        if error.status != 409:
            raise
        current: Any = api.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        api.replace_custom_resource_definition(name, body)

    def established() -> bool:
        found: Any = api.read_custom_resource_definition(name)
        conditions = found.status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    group, plural = body["spec"]["group"], body["spec"]["names"]["plural"]
    version = next(v["name"] for v in body["spec"]["versions"] if v.get("served"))

    def served() -> bool:  # discovery has caught up: the kind can be listed, so the first create finds it
        try:
            client.CustomObjectsApi(api_client).list_cluster_custom_object(group, version, plural, limit=1)
            return True
        except client.ApiException:
            return False

    wait_for("the CRD to be established", established, timeout=30)
    wait_for(f"the {plural} kind to be served", served, timeout=30)
    return str(name)


def install_operator_crds(api_client: Any) -> None:
    """Every CRD the operator watches (FineTuneJob, ModelServer)."""
    for file in OPERATOR_CRDS:
        install_crd(api_client, CRDS / file)


def with_spec_field(
    body: dict[str, Any], field: str, schema: dict[str, Any], under: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A copy of the CRD `body` whose every version's `spec` (or the object at `spec.<under...>`, e.g.
    `("template",)` for a FineTuneSweep's template) has one more property, `field` with `schema` (e.g.
    `{"type": "string", "default": "x"}`): the shape of a CRD upgrade that adds an optional, defaulted field."""
    changed = copy.deepcopy(body)
    for version in changed["spec"]["versions"]:
        node = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        for part in under:
            node = node["properties"][part]
        if field in node["properties"]:
            path = ".".join(("spec", *under, field))
            raise ValueError(f"{path} is already a field of {body['metadata']['name']}")
        node["properties"][field] = schema
    return changed
