"""finetune-operator: runs FineTuneJobs (train, evaluate, gate, publish) on a shared GPU cluster.

Layers, outermost first (pyproject.toml's import-linter contracts hold them): `handlers` (thin kopf glue, looping
over core.registry) -> one package per kind (`finetunesweep`, `finetunejob`, `modelserver`: a pure `plan.py` and a
`controller.py` that reads, plans and acts) -> pure `builders` -> `core` (core.kube is the only module that talks
to the Kubernetes API) -> `api` (the typed specs, labels, object shapes). docs/architecture.md draws it.
"""

__version__ = "0.1.0"

GROUP = "finetune.dev"
VERSION = "v1alpha1"
PLURAL = "finetunejobs"
KIND = "FineTuneJob"
