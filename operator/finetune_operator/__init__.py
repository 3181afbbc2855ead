"""finetune-operator: runs FineTuneJobs (train, evaluate, gate, publish) on a shared GPU cluster.

Layers, outermost first: `handlers` (thin kopf glue) -> `reconcile` (one level-triggered pass) -> pure
`spec`, `builders`, `status`, `gate`, `plan`; `kube` is the only module that talks to the Kubernetes API.
"""

__version__ = "0.1.0"

GROUP = "finetune.dev"
VERSION = "v1alpha1"
PLURAL = "finetunejobs"
KIND = "FineTuneJob"
