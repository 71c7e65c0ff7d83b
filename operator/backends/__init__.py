"""Run backends: where a job's pipeline runs (kfp.local or Kubeflow Pipelines)."""
