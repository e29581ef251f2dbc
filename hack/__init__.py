"""Developer tooling: the local Kubernetes cluster and the demo that runs on it."""
