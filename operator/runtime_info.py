"""What a running service reports about itself: the backend from its GET /v1/models.

Read with a short timeout; an unreachable or unready service is not an error, it just leaves
the backend unknown in status.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from typing import Protocol

__all__ = ["BackendReader", "BackendReport", "read_backend"]


@dataclass(frozen=True, slots=True)
class BackendReport:
    """The attention backend a pod serves with, and why it is not sparse when it is not."""

    backend: str
    fallback_reason: str | None


class BackendReader(Protocol):
    """Reads the BackendReport of the service at a base URL; None when it cannot be had."""

    def __call__(self, base_url: str, *, timeout: float) -> BackendReport | None: ...


def read_backend(base_url: str, *, timeout: float) -> BackendReport | None:
    """GET {base_url}/v1/models and take the first model card's backend and fallback reason."""
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models", timeout=timeout) as response:
            payload = json.loads(response.read(1 << 20))
    except (OSError, ValueError):
        return None
    try:
        card = payload["data"][0]
        backend = card["backend"]
        reason = card.get("fallback_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    if not isinstance(backend, str):
        return None
    return BackendReport(backend, reason if isinstance(reason, str) and reason else None)
