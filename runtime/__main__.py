"""Command line: `python -m sas_runtime serve --config FILE [--host H] [--port P]`.

The config file may also come from the environment (SAS_RUNTIME_CONFIG). A bad file stops
start-up with a message naming the field. SIGTERM (or Ctrl-C) drains: /readyz turns false, new
work gets 503, in-flight work finishes within `server.drainSeconds`, then the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from types import FrameType

import uvicorn

from sas_runtime.app import ServingState, create_app, serving_state
from sas_runtime.config import ConfigError, RuntimeConfig, load_config
from sas_runtime.engine import Engine

__all__ = ["CONFIG_ENV", "DEFAULT_ENGINE", "DrainingServer", "load_engine_factory", "main"]

CONFIG_ENV = "SAS_RUNTIME_CONFIG"
DEFAULT_ENGINE = "sas_runtime.model_engine:build_engine"
_SHUTDOWN_GRACE_SECONDS = 2

logger = logging.getLogger("sas_runtime")


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before exit: the first SIGTERM/SIGINT starts the drain
    (the listener stays open so late requests get a clear 503), exit follows when it is done.
    A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, state: ServingState) -> None:
        super().__init__(config)
        self._state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None or self._drain is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        logger.info("received %s: draining", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        await self._state.drain()
        self.should_exit = True


def load_engine_factory(spec: str) -> Callable[[RuntimeConfig], Engine]:
    """Import `module:function`, a callable that builds the engine from the config."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"engine factory {spec!r} must look like 'module:function'")
    factory: Callable[[RuntimeConfig], Engine] = getattr(
        importlib.import_module(module_name), attribute
    )
    return factory


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sas_runtime", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the HTTP API")
    serve.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"runtime config file, YAML or JSON (default: ${CONFIG_ENV})",
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (default: server.port from the config)")
    serve.add_argument(
        "--engine",
        default=DEFAULT_ENGINE,
        help=f"engine factory as module:function taking the config (default {DEFAULT_ENGINE})",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not args.config:
        print(
            f"sas_runtime: no config file: pass --config FILE or set {CONFIG_ENV}", file=sys.stderr
        )
        return 2
    try:
        config = load_config(args.config)
        engine = load_engine_factory(args.engine)(config)
        app = create_app(config, engine)
    except ConfigError as exc:
        print(f"sas_runtime: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"sas_runtime: cannot build the engine: {exc}", file=sys.stderr)
        return 1
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port if args.port is not None else config.server.port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level=args.log_level,
            timeout_graceful_shutdown=_SHUTDOWN_GRACE_SECONDS,
        ),
        serving_state(app),
    )
    server.run()
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
