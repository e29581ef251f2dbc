"""End-to-end tests of the operator and chart on a real local Kubernetes cluster."""
