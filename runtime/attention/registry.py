"""Backend names, their lazily imported classes, and the choice between them.

After vLLM's `vllm/v1/attention/backends/registry.py`: names map to import paths, so a missing
CUDA build never breaks importing the runtime; it only becomes a reason why `sparse` is skipped.
An explicit choice that cannot run raises with the reasons; only `auto` falls back.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from sas_runtime.attention.backend import AttentionBackend, AttentionSpec
from sas_runtime.config import AttentionBackendName

__all__ = [
    "AUTO_PRIORITY",
    "BACKEND_PATHS",
    "BackendSelection",
    "BackendUnavailableError",
    "backend_reasons",
    "load_backend_class",
    "select_backend",
]

BACKEND_PATHS: dict[AttentionBackendName, str] = {
    AttentionBackendName.SPARSE: "sas_runtime.kernels.backend:SparseBackend",
    AttentionBackendName.DENSE: "sas_runtime.attention.dense:DenseBackend",
    AttentionBackendName.REFERENCE: "sas_runtime.attention.reference:ReferenceBackend",
}
"""Each backend's class as 'module:ClassName', imported only when first asked for."""

AUTO_PRIORITY: tuple[AttentionBackendName, ...] = (
    AttentionBackendName.SPARSE,
    AttentionBackendName.DENSE,
)
"""The order `auto` tries backends in; the first that can run the configuration serves."""


class BackendUnavailableError(Exception):
    """An explicitly chosen backend (or every `auto` candidate) cannot run the configuration."""

    def __init__(self, name: str, reasons: list[str]) -> None:
        super().__init__(f"attention backend '{name}' cannot run: {'; '.join(reasons)}")
        self.name = name
        self.reasons = reasons


@dataclass(frozen=True, slots=True)
class BackendSelection:
    """The backend that serves and why others did not.

    fallback_reason: why `auto` did not get its first choice (None when it did, or for an
    explicit choice). skipped: each backend `auto` passed over, with its reasons.
    """

    backend: AttentionBackend
    fallback_reason: str | None = None
    skipped: dict[str, list[str]] = field(default_factory=dict)


def load_backend_class(
    name: AttentionBackendName, paths: Mapping[AttentionBackendName, str] = BACKEND_PATHS
) -> type[AttentionBackend]:
    """Import a backend's class; ImportError (with a readable message) when it is not built."""
    if name not in paths:
        raise ImportError(f"no attention backend named '{name}'")
    module_name, class_name = paths[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ImportError(f"kernel extension not built ({module_name} is missing)") from exc
        raise ImportError(f"cannot import {module_name}: {exc}") from exc
    except ImportError as exc:
        raise ImportError(f"cannot import {module_name}: {exc}") from exc
    backend_class = getattr(module, class_name, None)
    if not (isinstance(backend_class, type) and issubclass(backend_class, AttentionBackend)):
        raise ImportError(f"{module_name} has no attention backend class {class_name}")
    return backend_class


def backend_reasons(
    name: AttentionBackendName,
    spec: AttentionSpec,
    paths: Mapping[AttentionBackendName, str] = BACKEND_PATHS,
) -> tuple[type[AttentionBackend] | None, list[str]]:
    """The backend's class (None if it cannot be imported) and why it cannot run `spec`."""
    try:
        backend_class = load_backend_class(name, paths)
    except ImportError as exc:
        return None, [str(exc)]
    return backend_class, backend_class.validate_configuration(spec)


def select_backend(
    choice: AttentionBackendName,
    spec: AttentionSpec,
    paths: Mapping[AttentionBackendName, str] = BACKEND_PATHS,
) -> BackendSelection:
    """The backend that will run `spec`: the explicit `choice`, or the first of AUTO_PRIORITY
    that can. Raises BackendUnavailableError with the reasons when none can.

    paths: name -> 'module:ClassName' (tests pass their own to register fake backends)."""
    if choice is not AttentionBackendName.AUTO:
        backend_class, reasons = backend_reasons(choice, spec, paths)
        if backend_class is None or reasons:
            raise BackendUnavailableError(choice.value, reasons)
        return BackendSelection(backend=backend_class())
    skipped: dict[str, list[str]] = {}
    for candidate in AUTO_PRIORITY:
        backend_class, reasons = backend_reasons(candidate, spec, paths)
        if backend_class is not None and not reasons:
            fallback_reason = "; ".join(
                f"{name}: {', '.join(why)}" for name, why in skipped.items()
            )
            return BackendSelection(
                backend=backend_class(), fallback_reason=fallback_reason or None, skipped=skipped
            )
        skipped[candidate.value] = reasons
    raise BackendUnavailableError(
        "auto", [f"{name}: {', '.join(why)}" for name, why in skipped.items()]
    )
