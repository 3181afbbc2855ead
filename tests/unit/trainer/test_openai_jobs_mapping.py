"""The pure mapping of OpenAI's fine-tuning API onto FineTuneJobs (finetuning_api.jobs, job_view, catalog).

Every output is parsed by the official `openai` client's own typed models (`model_validate`: a missing required
field or a value outside its literals fails), every refusal names its param, and the manifests pass the
operator's typed spec and the CRD's schema checks (the operator's parser refuses unknown fields)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from finetune_operator.api.finetunejob import parse_spec
from finetune_trainer.finetuning_api import job_view, jobs
from finetune_trainer.finetuning_api.catalog import CatalogError, catalog_at, load_catalog, parse_catalog
from finetune_trainer.finetuning_api.errors import ApiError
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

CATALOG = parse_catalog(
    [
        {"name": "smollm2-135m", "baseModel": "s3://models/smollm2-135m/", "resources": {"gpus": 0, "memory": "4Gi"}},
        {
            "name": "llama-3-8b",
            "baseModel": "s3://models/llama-3-8b/",
            "resources": {"gpus": 1},
            "gpuType": "NVIDIA-L4",
            "method": "qlora",
            "epochs": 2,
            "batchSize": 4,
            "learningRate": 1e-4,
            "serving": {"engine": "vllm"},
        },
    ]
)
NAME = "ftjob-abcdefghijklmnopqrst"
TARGET = jobs.JobTarget(
    namespace="team-a",
    name=NAME,
    training_uri="s3://files/team-a/file-train.jsonl",
    validation_uri=None,
    output_uri=f"s3://artifacts/team-a/{NAME}/",
    storage={"endpoint": "http://s3.local:8333", "credentialsSecret": "s3-creds"},
)


def manifest(body: dict[str, Any], target: jobs.JobTarget = TARGET) -> dict[str, Any]:
    request = jobs.parse_create(body)
    return jobs.job_manifest(request, CATALOG.require(request.model), target)


def created(body: dict[str, Any], status: dict[str, Any] | None = None, **annotations: str) -> dict[str, Any]:
    """The object as the API server would return it after a create (and a status the operator wrote)."""
    obj = copy.deepcopy(manifest(body))
    obj["metadata"].update({"uid": "0f7c1c1e-1111-2222-3333-444455556666", "creationTimestamp": "2026-12-06T20:00:00Z"})
    obj["metadata"]["annotations"].update(annotations)
    if status is not None:
        obj["status"] = status
    return obj


BASIC = {"model": "smollm2-135m", "training_file": "file-abc123"}


def refusal(body: object) -> ApiError:
    with pytest.raises(ApiError) as caught:
        request = jobs.parse_create(body)
        CATALOG.require(request.model)
    assert caught.value.status == 400
    return caught.value


# --- create request -> manifest ---


def test_a_basic_request_is_a_supervised_lora_job_served_when_it_passes() -> None:
    obj = manifest(BASIC)
    spec = obj["spec"]
    assert obj["metadata"]["name"] == NAME and obj["metadata"]["namespace"] == "team-a"
    assert obj["metadata"]["labels"] == {jobs.API_LABEL: "openai"}
    assert spec["baseModel"] == {"uri": "s3://models/smollm2-135m/"}
    assert spec["dataset"] == {
        "train": {"uri": "s3://files/team-a/file-train.jsonl"},
        "split": {"validation": 0.0, "test": 0.1},
    }
    assert spec["method"] == {"type": "lora", "objective": "sft"}
    assert spec["hyperparameters"] == {"epochs": 3, "batchSize": "auto", "learningRate": 2e-4}
    assert spec["serving"] == {"enabled": True}
    assert spec["resources"] == {"gpus": 0, "memory": "4Gi"}
    assert spec["storage"] == {"endpoint": "http://s3.local:8333", "credentialsSecret": "s3-creds"}
    parsed = parse_spec(spec)  # the operator's own typed spec: unknown fields would be refused
    assert parsed.dataset.split.validation == 0.0 and parsed.serving.enabled


def test_every_supervised_field_is_mapped() -> None:
    body = {
        "model": "llama-3-8b",
        "training_file": "file-train",
        "validation_file": "file-valid",
        "suffix": "support-bot",
        "seed": 7,
        "metadata": {"team": "support", "ticket": "T-1"},
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 16, "learning_rate_multiplier": 0.5}},
        },
    }
    target = jobs.JobTarget(**{**TARGET.__dict__, "validation_uri": "s3://files/team-a/file-valid.jsonl"})
    obj = manifest(body, target)
    spec = obj["spec"]
    assert spec["hyperparameters"] == {"epochs": 4, "batchSize": 16, "learningRate": 5e-5, "seed": 7}
    assert spec["method"] == {"type": "qlora", "objective": "sft"}
    assert spec["dataset"]["validation"] == {"uri": "s3://files/team-a/file-valid.jsonl"}
    assert spec["dataset"]["split"] == {"test": 0.1}
    assert spec["resources"] == {"gpus": 1, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}}
    assert spec["serving"] == {"engine": "vllm", "enabled": True}
    annotations = obj["metadata"]["annotations"]
    assert annotations[jobs.A_MODEL] == "llama-3-8b"
    assert annotations[jobs.A_TRAINING_FILE] == "file-train"
    assert annotations[jobs.A_VALIDATION_FILE] == "file-valid"
    assert annotations[jobs.A_SUFFIX] == "support-bot"
    assert json.loads(annotations[jobs.A_METADATA]) == {"team": "support", "ticket": "T-1"}
    parse_spec(spec)


def test_auto_takes_the_catalog_defaults() -> None:
    body = {
        "model": "llama-3-8b",
        "training_file": "file-x",
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": "auto", "batch_size": "auto",
                                               "learning_rate_multiplier": "auto"}},
        },
    }  # fmt: skip
    assert manifest(body)["spec"]["hyperparameters"] == {"epochs": 2, "batchSize": 4, "learningRate": 1e-4}


def test_legacy_hyperparameters_are_supervised_ones() -> None:
    body = {**BASIC, "hyperparameters": {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 2}}
    assert manifest(body)["spec"]["hyperparameters"] == {"epochs": 1, "batchSize": 2, "learningRate": 4e-4}


def test_dpo_maps_to_the_dpo_objective_with_its_beta() -> None:
    body = {**BASIC, "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 2}}}}
    spec = manifest(body)["spec"]
    assert spec["method"] == {"type": "lora", "objective": "dpo", "dpo": {"beta": 0.25}}
    assert spec["hyperparameters"]["epochs"] == 2
    parse_spec(spec)
    auto = manifest({**BASIC, "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto"}}}})
    assert auto["spec"]["method"]["dpo"] == {"beta": 0.1}


def test_null_and_empty_optional_fields_are_not_given() -> None:
    body = {**BASIC, "validation_file": None, "suffix": None, "seed": None, "metadata": None, "integrations": []}
    assert manifest(body) == manifest(BASIC)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({**BASIC, "integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations",
         "unsupported_parameter"),
        ({**BASIC, "method": {"type": "reinforcement"}}, "method.type", "unsupported_parameter"),
        ({**BASIC, "method": {"type": "sft"}}, "method.type", "invalid_value"),
        ({**BASIC, "method": {"type": "supervised", "dpo": {}}}, "method.dpo", "unknown_parameter"),
        ({**BASIC, "method": {"type": "dpo", "dpo": {"beta": 0.1}}}, "method.dpo.beta", "unknown_parameter"),
        ({**BASIC, "method": {"type": "supervised", "supervised": {"hyperparameters": {"warmup": 1}}}},
         "method.supervised.hyperparameters.warmup", "unknown_parameter"),
        ({**BASIC, "method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 1}}}},
         "method.supervised.hyperparameters.beta", "unknown_parameter"),
        ({**BASIC, "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "invalid_value"),
        ({**BASIC, "hyperparameters": {"n_epochs": 2.5}}, "hyperparameters.n_epochs", "invalid_value"),
        ({**BASIC, "hyperparameters": {"batch_size": True}}, "hyperparameters.batch_size", "invalid_value"),
        ({**BASIC, "hyperparameters": {"learning_rate_multiplier": -1}},
         "hyperparameters.learning_rate_multiplier", "invalid_value"),
        ({**BASIC, "hyperparameters": {"prompt_loss_weight": 0.1}}, "hyperparameters.prompt_loss_weight",
         "unknown_parameter"),
        ({**BASIC, "hyperparameters": {"n_epochs": 1}, "method": {"type": "supervised",
          "supervised": {"hyperparameters": {"n_epochs": 2}}}}, "hyperparameters", "invalid_value"),
        ({**BASIC, "hyperparameters": {"n_epochs": 1}, "method": {"type": "dpo"}}, "hyperparameters",
         "invalid_value"),
        ({**BASIC, "frobnicate": 1}, "frobnicate", "unknown_parameter"),
        ({"training_file": "file-x"}, "model", "missing_required_parameter"),
        ({"model": "smollm2-135m"}, "training_file", "missing_required_parameter"),
        ({**BASIC, "training_file": "../etc/passwd"}, "training_file", "invalid_value"),
        ({**BASIC, "validation_file": 3}, "validation_file", "invalid_type"),
        ({**BASIC, "model": "gpt-4o-mini"}, "model", "model_not_found"),
        ({**BASIC, "model": "ft:smollm2-135m:team-a::ftjob-abcdefghijklmnopqrst"}, "model", "invalid_value"),
        ({**BASIC, "suffix": "a:b"}, "suffix", "invalid_value"),
        ({**BASIC, "suffix": "x" * 65}, "suffix", "invalid_value"),
        ({**BASIC, "seed": -1}, "seed", "invalid_value"),
        ({**BASIC, "seed": "7"}, "seed", "invalid_value"),
        ({**BASIC, "metadata": {"k": 1}}, "metadata.k", "invalid_value"),
        ({**BASIC, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value"),
        ({**BASIC, "metadata": ["a"]}, "metadata", "invalid_type"),
        ({**BASIC, "method": "supervised"}, "method", "invalid_type"),
        ({**BASIC, "method": {"type": "supervised", "supervised": {"hyperparameters": {}, "x": 1}}},
         "method.supervised.x", "unknown_parameter"),
    ],
)  # fmt: skip
def test_every_refusal_names_its_param(body: dict[str, Any], param: str, code: str) -> None:
    error = refusal(body)
    assert (error.param, error.code) == (param, code), error.message
    assert error.body()["error"]["param"] == param


def test_a_body_that_is_not_an_object_is_refused() -> None:
    assert refusal(["model"]).param == "body"


def test_job_names_are_valid_kubernetes_names_and_distinct() -> None:
    names = {jobs.new_job_name() for _ in range(200)}
    assert len(names) == 200
    assert all(jobs.JOB_NAME.match(name) and len(name) <= 63 for name in names)


# --- catalog ---


def test_the_catalog_refuses_unknown_keys_and_duplicates(tmp_path: Any) -> None:
    with pytest.raises(CatalogError, match="unknown key 'gpu'"):
        parse_catalog([{"name": "m", "baseModel": "s3://models/m/", "gpu": 1}])
    with pytest.raises(CatalogError, match="appears more than once"):
        parse_catalog([{"name": "m", "baseModel": "s3://b/m/"}, {"name": "m", "baseModel": "s3://b/n/"}])
    with pytest.raises(CatalogError, match=r"name: 'a:b'"):
        parse_catalog([{"name": "a:b", "baseModel": "s3://b/m/"}])
    with pytest.raises(CatalogError, match="serving: only"):
        parse_catalog([{"name": "m", "baseModel": "s3://b/m/", "serving": {"apiKeySecret": "x"}}])
    with pytest.raises(CatalogError, match="baseModel"):
        parse_catalog([{"name": "m", "baseModel": "hf://org/m"}])
    path = tmp_path / "catalog.yaml"
    path.write_text("models:\n- {name: m, baseModel: 's3://b/m/', epochs: 0}\n")
    with pytest.raises(CatalogError, match=r"catalog.yaml: catalog\[0\] \(m\).epochs"):
        load_catalog(path)
    path.write_text("- {name: m, baseModel: 's3://b/m/'}\n")
    assert [entry.name for entry in load_catalog(path).entries] == ["m"]
    assert load_catalog(None).entries == ()
    assert catalog_at(str(tmp_path / "absent.yaml")).entries == ()  # no file: nothing offered, said in the log
    path.write_text("models: []\n")  # what the chart's ConfigMap holds with api.models empty
    assert catalog_at(str(path)).entries == ()
    path.write_text("models:\n- {name: m}\n")
    with pytest.raises(CatalogError, match="baseModel"):  # a file that is wrong stops the service
        catalog_at(str(path))


def test_an_unknown_model_names_the_models_offered() -> None:
    error = refusal({**BASIC, "model": "davinci-002"})
    assert "smollm2-135m, llama-3-8b" in error.message


# --- object -> FineTuningJob ---


def openai_job(obj: dict[str, Any]) -> FineTuningJob:
    view = job_view.to_openai_job(obj)
    job = FineTuningJob.model_validate(view)
    missing = [name for name, info in FineTuningJob.model_fields.items() if info.is_required() and name not in view]
    assert not missing
    return job


def test_a_new_job_is_validating_files_with_every_field() -> None:
    job = openai_job(created({**BASIC, "suffix": "bot", "metadata": {"team": "a"}}))
    assert job.id == NAME and job.object == "fine_tuning.job"
    assert job.status == "validating_files"
    assert job.model == "smollm2-135m" and job.organization_id == "team-a"
    assert job.training_file == "file-abc123" and job.validation_file is None
    assert job.created_at == 1796587200
    assert job.fine_tuned_model is None and job.finished_at is None and job.error is None
    assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.batch_size == "auto"
    assert job.hyperparameters.learning_rate_multiplier == 1.0
    assert job.method is not None and job.method.type == "supervised"
    assert job.metadata == {"team": "a"} and job.seed == 42


PROGRESS = {
    "run": 1,
    "stage": "training",
    "step": 40,
    "totalSteps": 100,
    "loss": 1.31,
    "lastCheckpointStep": 40,
    "estimatedFinishTime": "2026-12-06T21:00:00Z",
    "updatedAt": "2026-12-06T20:30:00Z",
    "validationLoss": 1.5,
    "validationStep": 40,
    "bestValidationLoss": 1.4,
    "bestValidationStep": 20,
}
VALIDATION = {"run": 1, "passed": True, "message": "train: 90 records", "tokens": {"train": 1000}, "records": {}}


def condition(kind: str, at: str, status: str = "True", message: str = "") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": "R", "message": message, "lastTransitionTime": at}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, "validating_files"),
        ({"phase": "Pending", "run": 1}, "validating_files"),
        ({"phase": "Queued", "run": 1}, "validating_files"),
        ({"phase": "Validating", "run": 1}, "validating_files"),
        ({"phase": "Queued", "run": 1, "validation": VALIDATION}, "queued"),
        ({"phase": "Pending", "run": 1, "validation": VALIDATION}, "queued"),
        ({"phase": "Queued", "run": 2, "validation": VALIDATION}, "validating_files"),
        (
            {
                "phase": "Queued",
                "run": 1,
                "conditions": [condition("Trained", "", "False", "validation: waiting for pods")],
            },
            "validating_files",
        ),
        (
            {
                "phase": "Queued",
                "run": 1,
                "conditions": [condition("Trained", "", "False", "validation Job created; x")],
            },
            "validating_files",
        ),
        (
            {"phase": "Queued", "run": 1, "conditions": [condition("Trained", "", "False", "training Job created; x")]},
            "queued",
        ),
        (
            {"phase": "Pending", "run": 1, "conditions": [condition("Trained", "", "False", "waiting for Secret 's'")]},
            "queued",
        ),
        ({"phase": "Training", "run": 1, "validation": VALIDATION, "progress": PROGRESS}, "running"),
        ({"phase": "Evaluating", "run": 1}, "running"),
        ({"phase": "Publishing", "run": 1}, "running"),
        ({"phase": "Serving", "run": 1, "validation": VALIDATION}, "succeeded"),
        ({"phase": "Succeeded", "run": 1}, "succeeded"),
        ({"phase": "Failed", "run": 1, "error": {"code": "GateFailed", "message": "test_loss 2.1 > 1.8"}}, "failed"),
        ({"phase": "Suspended", "run": 1}, "queued"),
    ],
)
def test_status_mapping(status: dict[str, Any], expected: str) -> None:
    assert openai_job(created(BASIC, status)).status == expected


def test_a_running_job_has_its_estimated_finish() -> None:
    job = openai_job(created(BASIC, {"phase": "Training", "run": 1, "validation": VALIDATION, "progress": PROGRESS}))
    assert job.estimated_finish == 1796590800 and job.trained_tokens is None


def test_a_succeeded_job_names_its_model_and_tokens() -> None:
    status = {
        "phase": "Serving",
        "run": 1,
        "validation": VALIDATION,
        "conditions": [condition("Trained", "2026-12-06T20:40:00Z"), condition("Ready", "2026-12-06T20:45:00Z")],
        "endpoint": {"url": "http://x.team-a.svc:8000/v1", "model": NAME, "run": 1},
    }
    job = openai_job(created({**BASIC, "suffix": "bot"}, status))
    assert job.fine_tuned_model == f"ft:smollm2-135m:team-a:bot:{NAME}"
    assert job.finished_at == 1796589900
    assert job.trained_tokens == 3000
    no_suffix = openai_job(created(BASIC, status))
    assert no_suffix.fine_tuned_model == f"ft:smollm2-135m:team-a::{NAME}"
    assert job_view.parse_fine_tuned_model(no_suffix.fine_tuned_model) == ("team-a", NAME)


def test_a_failed_job_has_its_error_and_the_param_it_names() -> None:
    status = {"phase": "Failed", "run": 1, "error": {"code": "DatasetInvalid", "message": "line 3: not JSON"}}
    job = openai_job(created(BASIC, status))
    assert job.error is not None
    assert (job.error.code, job.error.message, job.error.param) == ("DatasetInvalid", "line 3: not JSON",
                                                                    "training_file")  # fmt: skip
    gate = openai_job(created(BASIC, {"phase": "Failed", "error": {"code": "GateFailed", "message": "m"}}))
    assert gate.error is not None and gate.error.param is None
    bare = openai_job(created(BASIC, {"phase": "Failed"}))
    assert bare.error is not None and bare.error.code == "JobFailed"


def test_a_cancelled_job_is_cancelled_whatever_its_phase() -> None:
    obj = created(BASIC, {"phase": "Suspended", "run": 1}, **{jobs.A_CANCELLED_AT: "1796590000"})
    job = openai_job(obj)
    assert job.status == "cancelled" and job.finished_at == 1796590000
    assert not job_view.is_paused({**obj, "spec": {**obj["spec"], "suspend": True}})


def test_dpo_jobs_show_their_method_and_beta() -> None:
    obj = created({**BASIC, "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}}})
    job = openai_job(obj)
    assert job.method is not None and job.method.type == "dpo" and job.method.dpo is not None
    hyper = job.method.dpo.hyperparameters
    assert hyper is not None and hyper.beta == 0.3


def test_the_spec_is_the_truth_for_hyperparameters() -> None:
    obj = created({**BASIC, "hyperparameters": {"learning_rate_multiplier": 2}})
    obj["spec"]["hyperparameters"]["epochs"] = 5  # edited with kubectl after the create
    job = openai_job(obj)
    assert job.hyperparameters.n_epochs == 5 and job.hyperparameters.learning_rate_multiplier == 2.0


def test_fine_tuned_model_names_that_are_not_jobs() -> None:
    for name in ("smollm2-135m", f"ft:smollm2-135m:team-a::{NAME}:ckpt-step-10", "ft:m:team-a::job", "ft:m:::x"):
        assert job_view.parse_fine_tuned_model(name) is None


# --- lists, events, checkpoints ---


def test_lists_are_newest_first_and_pages_follow_the_cursor() -> None:
    objs = [{"metadata": {"name": f"ftjob-{i}", "creationTimestamp": f"2026-12-06T20:0{i}:00Z"}} for i in range(5)]
    ordered = job_view.sort_jobs(objs)
    assert [job_view.job_id(o) for o in ordered] == [f"ftjob-{i}" for i in (4, 3, 2, 1, 0)]
    first, more = job_view.page(ordered, job_view.job_id, None, 2)
    assert [job_view.job_id(o) for o in first] == ["ftjob-4", "ftjob-3"] and more
    last, more = job_view.page(ordered, job_view.job_id, "ftjob-2", 5)
    assert [job_view.job_id(o) for o in last] == ["ftjob-1", "ftjob-0"] and not more
    assert job_view.page(ordered, job_view.job_id, "ftjob-gone", 5) == ([], False)


def test_a_broken_annotation_reads_as_no_metadata() -> None:
    for broken in ("{not json", "[1, 2]"):
        obj = created(BASIC, **{jobs.A_METADATA: broken})
        assert openai_job(obj).metadata is None and not job_view.matches_metadata(obj, {"a": "b"})


def test_metadata_filter() -> None:
    obj = created({**BASIC, "metadata": {"team": "a", "env": "prod"}})
    assert job_view.matches_metadata(obj, {"team": "a"})
    assert job_view.matches_metadata(obj, {})
    assert not job_view.matches_metadata(obj, {"team": "b"})
    assert not job_view.matches_metadata(created(BASIC), {"team": "a"})


def kube_event(reason: str, message: str, at: str, kind: str = "Normal", uid: str = "e1") -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": f"{NAME}.{uid}"},
        "involvedObject": {"kind": "FineTuneJob", "name": NAME, "uid": "0f7c1c1e-1111-2222-3333-444455556666"},
        "reason": reason,
        "message": message,
        "type": kind,
        "lastTimestamp": at,
    }


def test_events_from_the_kubernetes_events_and_the_status() -> None:
    status = {
        "phase": "Failed",
        "run": 1,
        "validation": VALIDATION,
        "progress": PROGRESS,
        "gate": {"passed": False, "summary": "test_loss 2.1 > 1.8"},
        "metrics": {"test": {"loss": 2.1}},
        "conditions": [condition("GatePassed", "2026-12-06T20:50:00Z", "False")],
        "error": {"code": "GateFailed", "message": "test_loss 2.1 > 1.8"},
    }
    events_in = [
        kube_event("Validating", "run 1: checking data", "2026-12-06T20:01:00Z", uid="e1"),
        kube_event("Training", "run 1: training", "2026-12-06T20:05:00Z", uid="e2"),
        kube_event("Failed", "test_loss 2.1 > 1.8", "2026-12-06T20:51:00Z", "Warning", uid="e3"),
        {
            **kube_event("Training", "another object's", "2026-12-06T20:05:00Z", uid="e4"),
            "involvedObject": {"uid": "x"},
        },
    ]
    events = job_view.job_events(created(BASIC, status), events_in)
    parsed = [FineTuningJobEvent.model_validate(event) for event in events]
    messages = [event.message for event in parsed]
    assert messages[0] == "Failed: test_loss 2.1 > 1.8" and parsed[0].level == "error"
    assert "Evaluation gate failed: test_loss 2.1 > 1.8" in messages
    assert "Step 40/100: training loss=1.3100, validation loss=1.5000" in messages
    assert "train: 90 records" in messages
    assert messages[-1] == f"Created fine-tuning job: {NAME}"
    assert not any("another object's" in m for m in messages)
    assert not any(m.startswith("GateFailed:") for m in messages)  # the Failed event already says it
    assert [e.created_at for e in parsed] == sorted((e.created_at for e in parsed), reverse=True)
    assert len({e.id for e in parsed}) == len(parsed)
    metrics = next(e for e in parsed if e.type == "metrics")
    assert metrics.data == {"step": 40, "total_steps": 100, "train_loss": 1.31, "valid_loss": 1.5}
    again = job_view.job_events(created(BASIC, status), events_in)
    assert [e["id"] for e in again] == [e.id for e in parsed]  # ids are stable across requests
    no_kube = [FineTuningJobEvent.model_validate(e) for e in job_view.job_events(created(BASIC, status), [])]
    assert any(e.message == "GateFailed: test_loss 2.1 > 1.8" and e.level == "error" for e in no_kube)


def test_events_of_one_second_keep_the_order_they_were_written() -> None:
    at = "2026-12-06T20:05:00Z"
    written = [("Queued", "7"), ("Training", "9"), ("Publishing", "10"), ("Serving", "12")]
    events_in = [{**kube_event(reason, "m", at, uid=f"u{reason}"), "metadata": {"uid": f"u{reason}",
                  "resourceVersion": version}} for reason, version in written]  # fmt: skip
    for shuffled in (events_in, events_in[::-1], events_in[1::2] + events_in[::2]):
        events = job_view.job_events(created(BASIC), shuffled)
        phases = [e["data"]["phase"] for e in events if e["data"] and "phase" in e["data"]]
        assert phases == ["Serving", "Publishing", "Training", "Queued"]


def test_checkpoints_are_the_newest_and_the_best() -> None:
    obj = created({**BASIC, "suffix": "bot"}, {"phase": "Training", "run": 1, "progress": PROGRESS})
    checkpoints = [FineTuningJobCheckpoint.model_validate(c) for c in job_view.job_checkpoints(obj)]
    assert [c.step_number for c in checkpoints] == [40, 20]
    newest, best = checkpoints
    assert newest.metrics.train_loss == 1.31 and newest.metrics.valid_loss == 1.5
    assert best.metrics.valid_loss == 1.4 and best.metrics.train_loss is None
    assert newest.fine_tuned_model_checkpoint == f"ft:smollm2-135m:team-a:bot:{NAME}:ckpt-step-40"
    assert newest.fine_tuning_job_id == NAME and newest.created_at == 1796589000
    assert job_view.job_checkpoints(created(BASIC)) == []


# --- the routes' pure decisions: cancel/pause/resume, which endpoint may be called, streamed chunks ---


def test_cancel_pause_resume_decisions() -> None:
    from finetune_trainer.finetuning_api.routes_jobs import cancel_patch, pause_patch, resume_patch

    running = created(BASIC, {"phase": "Training", "run": 1})
    assert cancel_patch(running, now=5) == {
        "metadata": {"annotations": {jobs.A_CANCELLED_AT: "5"}},
        "spec": {"suspend": True, "serving": {"enabled": False}},
    }
    assert pause_patch(running) == {"spec": {"suspend": True}}
    paused = {**running, "spec": {**running["spec"], "suspend": True}}
    assert resume_patch(paused) == {"spec": {"suspend": False}}
    assert cancel_patch(paused, now=1)["spec"]["suspend"] is True  # a paused job can be cancelled
    for refused, decide in (
        (paused, pause_patch),
        (running, resume_patch),
        (created(BASIC, {"phase": "Serving"}), cancel_patch),
        (created(BASIC, {"phase": "Failed"}), pause_patch),
        (created(BASIC, {}, **{jobs.A_CANCELLED_AT: "1"}), cancel_patch),
    ):
        with pytest.raises(ApiError) as caught:
            decide(refused)
        assert caught.value.status == 400 and caught.value.param == "fine_tuning_job_id"
    cancelled = {**paused, "metadata": {**paused["metadata"], "annotations": {jobs.A_CANCELLED_AT: "1"}}}
    with pytest.raises(ApiError):
        resume_patch(cancelled)


def test_only_a_service_of_the_jobs_namespace_is_called() -> None:
    from finetune_trainer.finetuning_api.routes_models import allowed_upstream

    obj = created(BASIC, {"endpoint": {"url": "x"}})
    assert allowed_upstream("http://bot-serving.team-a.svc:8000/v1/", obj) == "http://bot-serving.team-a.svc:8000/v1"
    assert allowed_upstream("http://bot.team-a.svc.cluster.local:8000/v1", obj)
    # the status names the namespace it likes: only the object's own counts, so another namespace's server (or any
    # Service there) is never called through the API, whose pods every serving NetworkPolicy admits
    shared = created(BASIC, {"endpoint": {"url": "x", "server": "shared/srv"}})
    with pytest.raises(ApiError):
        allowed_upstream("http://srv-server.shared.svc:8000/v1", shared)
    assert allowed_upstream("http://srv-server.team-a.svc:8000/v1", shared)  # a ModelServer of its own namespace
    for url in (
        "http://bot.team-b.svc:8000/v1",
        "http://bot.team-a.svc:9090/metrics",  # another port of a Service it may name
        "http://bot.team-a.svc:8000/admin",
        "http://bot.team-a.svc/v1",
        "http://169.254.169.254/latest",
        "https://bot.team-a.svc:8000/v1",
        "http://bot.team-a.svc.evil.example/v1",
        "http://user@bot.team-a.svc/v1",
    ):
        with pytest.raises(ApiError) as caught:
            allowed_upstream(url, obj)
        assert caught.value.status == 502


def test_a_model_is_served_only_when_succeeded_enabled_and_reported() -> None:
    from finetune_trainer.finetuning_api.routes_models import served

    serving = {"phase": "Serving", "endpoint": {"url": "http://b.team-a.svc:8000/v1"}}
    assert served(created(BASIC, serving))
    assert not served(created(BASIC, {**serving, "phase": "Publishing"}))
    assert not served(created(BASIC, {"phase": "Serving"}))
    off = created(BASIC, serving)
    off["spec"]["serving"]["enabled"] = False
    assert not served(off)


def test_streamed_chunks_name_the_fine_tuned_model() -> None:
    import asyncio

    from finetune_trainer.finetuning_api.routes_models import _sse

    async def lines() -> Any:
        for line in ('data: {"id": "c", "model": "support-bot", "choices": []}', "", "data: [DONE]", "data: {bad"):
            yield line

    async def collect() -> list[bytes]:
        return [chunk async for chunk in _sse(lines(), "ft:m:ns::ftjob-x")]

    out = asyncio.run(collect())
    assert json.loads(out[0].decode()[6:]) == {"id": "c", "model": "ft:m:ns::ftjob-x", "choices": []}
    assert out[1:] == [b"\n", b"data: [DONE]\n", b"data: {bad\n"]


# --- the Kubernetes answers, as the caller gets them ---


@pytest.mark.parametrize(
    ("status", "expected", "code"),
    [(403, 403, "permission_denied"), (404, 404, None), (409, 409, "conflict"), (422, 400, "invalid_value"),
     (400, 400, "invalid_value"), (500, 503, None)],
)  # fmt: skip
def test_kubernetes_refusals_become_openai_errors(status: int, expected: int, code: str | None) -> None:
    from finetune_trainer.finetuning_api.caller import Caller
    from finetune_trainer.finetuning_api.job_objects import kube_errors
    from kubernetes.client.exceptions import ApiException

    caller = Caller(username="system:serviceaccount:team-a:ci", groups=(), uid="", namespace="team-a", api_client=None)
    failure = ApiException(status=status, reason="Reason")
    failure.body = json.dumps({"message": 'FineTuneJob "x" is invalid: spec.output.uri must end in /'})
    with pytest.raises(ApiError) as caught, kube_errors(caller, "create finetunejobs.finetune.dev", ident="x"):
        raise failure
    assert (caught.value.status, caught.value.code) == (expected, code)
    if status == 403:
        assert "system:serviceaccount:team-a:ci may not create finetunejobs.finetune.dev in namespace team-a" in (
            caught.value.message
        )
    if status == 422:
        assert "spec.output.uri must end in /" in caught.value.message
