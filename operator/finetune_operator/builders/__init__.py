"""Pure builders: typed spec in, Kubernetes manifests (plain dicts) out. No kopf, no client imports."""
