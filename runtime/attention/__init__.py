"""Attention backends (sparse, dense, reference) behind one interface, and the choice between them."""

from sas_runtime.attention.backend import (
    AttentionBackend,
    AttentionMetadata,
    AttentionOutput,
    AttentionSpec,
)
from sas_runtime.attention.registry import (
    AUTO_PRIORITY,
    BACKEND_PATHS,
    BackendSelection,
    BackendUnavailableError,
    backend_reasons,
    load_backend_class,
    select_backend,
)

__all__ = [
    "AUTO_PRIORITY",
    "BACKEND_PATHS",
    "AttentionBackend",
    "AttentionMetadata",
    "AttentionOutput",
    "AttentionSpec",
    "BackendSelection",
    "BackendUnavailableError",
    "backend_reasons",
    "load_backend_class",
    "select_backend",
]
