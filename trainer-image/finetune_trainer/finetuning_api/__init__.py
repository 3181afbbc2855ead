"""OpenAI's fine-tuning API (files, fine-tuning jobs, models, inference) in front of the FineTuneJob CRD.

Why here, beside `serving` and `training`: an uploaded file is checked with the trainer's own readers and format
detection (`finetune_trainer.data`), without torch, and the service runs from the trainer image. Every Kubernetes
action runs as the caller (impersonation, after a TokenReview of the bearer token), so a user can do through this
API exactly what RBAC lets them do with kubectl. Nothing is kept in the service's memory: files live in object
storage, jobs are FineTuneJobs, and every id is derived from those objects.

Modules: `caller` (who is calling, and a Kubernetes client acting as them), `errors` (OpenAI-shaped errors).
"""
