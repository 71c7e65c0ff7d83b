"""The Kubernetes operator: kopf handlers, a pure reconciler, run backends, metrics."""
