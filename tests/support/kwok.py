"""How tests put pods on the local cluster's kwok fake nodes and script their end (see hack/README.md)."""

KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
KWOK_NODE_SELECTOR = {"type": "kwok"}
EXIT_CODE = "kwok.finetune.dev/exit-code"
MESSAGE = "kwok.finetune.dev/termination-message"
DELAY = "kwok.finetune.dev/delay"
