"""`python -m sas_operator`: run the operator (kopf with our handlers) until stopped."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time

import kopf

from sas_operator import handlers  # noqa: F401  (importing registers the kopf handlers)
from sas_operator.settings import OperatorSettings, SettingsError

__all__ = ["main"]

_LOG_FORMATS = {
    "plain": kopf.LogFormat.PLAIN,
    "full": kopf.LogFormat.FULL,
    "json": kopf.LogFormat.JSON,
}


def main() -> int:
    """Read the settings from the environment, configure logging, run kopf. A bad setting
    exits with status 2 and a message naming the variable."""
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as exc:
        print(f"sas-operator: {exc}", file=sys.stderr)
        return 2
    kopf.configure(log_format=_LOG_FORMATS[settings.log_format])
    logging.getLogger().setLevel(settings.log_level.upper())
    # kopf takes its peer id from POD_ID (the chart sets the pod name); the resync loop needs
    # the same id to follow kopf's peering pauses, so fix it here when nobody did.
    identity = os.environ.setdefault(
        "POD_ID", f"{socket.gethostname()}/{int(time.time())}/{secrets.token_hex(3)}"
    )
    kopf.run(
        standalone=settings.peering is None,
        peering_name=settings.peering,
        priority=settings.peering_priority,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        memo=kopf.Memo(settings=settings, identity=identity),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
