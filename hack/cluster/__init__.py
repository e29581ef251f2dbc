"""A real Kubernetes control plane on loopback, built from the Go module proxy, with kwok's fake nodes."""
