"""Bearer-token check for the API, with the token read once from `server.authTokenFile`."""

from __future__ import annotations

import hmac
from pathlib import Path

from sas_runtime.config import ConfigError

__all__ = ["BearerAuth"]


class BearerAuth:
    """Accepts requests whose `Authorization` header is `Bearer <token>`; compares in constant time."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the bearer token must not be empty")
        self._expected = f"Bearer {token}".encode()

    @classmethod
    def from_file(cls, path: str | Path) -> BearerAuth:
        """Read the token (surrounding whitespace stripped); ConfigError if missing or empty."""
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"server.authTokenFile: cannot read {path}: {exc.strerror}") from exc
        if not token:
            raise ConfigError(f"server.authTokenFile: {path} is empty")
        return cls(token)

    def allows(self, authorization: bytes | None) -> bool:
        """Whether the raw `Authorization` header value carries the expected token."""
        return authorization is not None and hmac.compare_digest(authorization, self._expected)
