"""The Kubeflow pipeline built from a CompressionJob: compile it, or run it locally."""
