"""The trainer's ServiceAccount may patch its own progress ConfigMap, and nothing else (real RBAC)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from finetune_trainer.training.progress import config_map_sink, progress_payload

from .conftest import GROUP, PLURAL, VERSION, Jobs, Operator, ftj_manifest, wait_for

pytestmark = pytest.mark.cluster


def _client_as(cluster: Any, namespace: str, service_account: str) -> Any:
    from kubernetes import client

    token = cluster.core.create_namespaced_service_account_token(
        service_account,
        namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)),
    ).status.token
    admin = cluster.api_client.configuration
    config = client.Configuration()
    config.host, config.ssl_ca_cert, config.verify_ssl = admin.host, admin.ssl_ca_cert, admin.verify_ssl
    config.api_key = {"BearerToken": f"Bearer {token}"}
    return client.ApiClient(config)


def test_trainer_may_patch_only_its_own_progress_config_map(operator: Operator, jobs: Jobs, namespace: str) -> None:
    """The pod's token (usable by anyone who may run a pod as the ServiceAccount) writes nothing the operator
    decides from: not the FineTuneJob's status, spec or list, not another job's channel, not the run's config."""
    from kubernetes import client

    jobs.create(namespace, ftj_manifest("mine"))
    jobs.create(namespace, ftj_manifest("theirs"))
    for name in ("mine", "theirs"):
        wait_for(f"{name}'s Job", lambda n=name: jobs.training_jobs(namespace, n))  # type: ignore[misc]
    jobs.running_pod(namespace, "mine-r1")
    as_trainer = _client_as(jobs.cluster, namespace, "mine-trainer")
    trainer, core = client.CustomObjectsApi(as_trainer), client.CoreV1Api(as_trainer)
    # The trainer's own progress code, as its pod runs it; the operator copies the report into status.progress.
    progress = progress_payload(
        1,
        "training",
        time.time(),
        step=3,
        total=10,
        epoch=0.3,
        loss=1.25,
        learning_rate=1.7e-4,
        tokens_per_second=812.5,
        seconds_per_step=2.0,
        last_checkpoint=2,
    )
    config_map_sink(namespace, "mine-progress", as_trainer)(progress)
    shown = wait_for("the report in status.progress", lambda: jobs.status(namespace, "mine").get("progress"))
    assert (shown["step"], shown["percent"], shown["loss"]) == (3, 30, 1.25)
    published = {"status": {"published": {"run": 1, "modelUri": "s3://elsewhere/model/"}}}
    forbidden: Callable[[], Any]
    for forbidden in (
        lambda: trainer.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "mine", published),
        lambda: trainer.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "mine", progress),
        lambda: trainer.get_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "mine"),
        lambda: trainer.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "theirs", progress),
        lambda: trainer.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "mine", {"spec": {"suspend": True}}
        ),
        lambda: trainer.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL),
        lambda: core.patch_namespaced_config_map("theirs-progress", namespace, {"data": {"progress.json": "{}"}}),
        lambda: core.patch_namespaced_config_map("mine-r1-config", namespace, {"data": {"config.json": "{}"}}),
        lambda: core.read_namespaced_config_map("mine-progress", namespace),
        lambda: core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x"))
        ),
    ):
        with pytest.raises(client.ApiException) as refused:
            forbidden()
        assert refused.value.status == 403


def test_a_trainer_role_an_older_operator_made_is_put_back_to_the_current_rules(
    operator: Operator, jobs: Jobs, namespace: str
) -> None:
    """Before issue #24 the trainer's Role also granted finetunejobs/status patch. A Role like that, left by an
    older operator, is brought to the current rules by the next operator process (an upgrade), whatever the
    job's status claims (a status that says "checked" is not trusted), and its token can then no longer patch
    the status."""
    from kubernetes import client

    jobs.create(namespace, ftj_manifest("legacy"))
    wait_for("the Job", lambda: jobs.training_jobs(namespace, "legacy"))
    current = wait_for("the rules checked", lambda: jobs.status(namespace, "legacy").get("trainerRulesHash"))
    rbac = jobs.cluster.rbac
    role = rbac.read_namespaced_role("legacy-trainer", namespace)
    kept = [r.to_dict() for r in role.rules]
    old = client.V1PolicyRule(
        api_groups=[GROUP], resources=[f"{PLURAL}/status"], resource_names=["legacy"], verbs=["get", "patch"]
    )
    role.rules = [*role.rules, old]
    operator.kill()  # the older operator stops (an upgrade) ...
    rbac.replace_namespaced_role("legacy-trainer", namespace, role)  # ... having made this Role
    # whoever may patch the status claims the Role was checked: the new operator looks anyway
    jobs.cluster.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "legacy", {"status": {"trainerRulesHash": current}}
    )
    operator.start()
    wait_for(
        "the Role put back",
        lambda: [r.to_dict() for r in rbac.read_namespaced_role("legacy-trainer", namespace).rules] == kept,
        timeout=30,
    )
    assert wait_for("recorded", lambda: jobs.status(namespace, "legacy").get("trainerRulesHash")) == current
    trainer = client.CustomObjectsApi(_client_as(jobs.cluster, namespace, "legacy-trainer"))
    with pytest.raises(client.ApiException) as refused:
        trainer.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, "legacy", {"status": {"phase": "Succeeded"}}
        )
    assert refused.value.status == 403
