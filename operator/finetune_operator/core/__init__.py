"""Resource-agnostic machinery every control loop uses: the Kubernetes client (the one module that talks to
the API), the store of what is watched, the work queue, leader election, status patching, settings, metrics."""
