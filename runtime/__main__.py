"""Command line: `python -m sas_runtime serve --config FILE [--host H] [--port P]`.

The config file may also come from the environment (SAS_RUNTIME_CONFIG). A bad file stops
start-up with a message naming the field. SIGTERM (or Ctrl-C) drains: /readyz turns false, new
work gets 503, in-flight work finishes within `server.drainSeconds`, then the process exits 0.

With `server.frontends` > 1, `serve` supervises one engine process and that many HTTP
front-end processes (`sas_runtime.supervisor`); `engine` and `frontend` are the commands it
starts them with.
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
from typing import Any

import uvicorn
import uvloop

from sas_runtime.app import ServingState, create_app, create_frontend_app, serving_state
from sas_runtime.config import ConfigError, RuntimeConfig, load_config
from sas_runtime.engine import Engine, TextEncoder
from sas_runtime.engine_server import exit_with_parent, serve_engine

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_ENGINE",
    "DEFAULT_TEXT_ENCODER",
    "DrainingServer",
    "load_engine_factory",
    "load_text_encoder_factory",
    "main",
]

CONFIG_ENV = "SAS_RUNTIME_CONFIG"
DEFAULT_ENGINE = "sas_runtime.model_engine:build_engine"
DEFAULT_TEXT_ENCODER = "sas_runtime.model_engine:build_text_encoder"
_SHUTDOWN_GRACE_SECONDS = 2
_LISTEN_BACKLOG = 2048

logger = logging.getLogger("sas_runtime")


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before exit: the first SIGTERM/SIGINT starts the drain
    (the listener stays open so late requests get a clear 503), exit follows when it is done.
    A second signal answers what is left with 503 and exits at once. A front-end process
    (`watch_parent`) also drains when its supervisor is gone."""

    def __init__(
        self, config: uvicorn.Config, state: ServingState, *, watch_parent: bool = False
    ) -> None:
        super().__init__(config)
        self._state = state
        self._watch_parent = watch_parent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None
        self._cut_short = False
        self._stop: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        watchdog = asyncio.create_task(self._exit_with_parent()) if self._watch_parent else None
        try:
            await super().serve(sockets)
        finally:
            if watchdog is not None:
                watchdog.cancel()

    async def _exit_with_parent(self) -> None:
        gone = asyncio.Event()
        await exit_with_parent(gone)
        self.handle_exit(signal.SIGTERM, None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None or self._cut_short or self.should_exit:
            super().handle_exit(sig, frame)
            return
        if self._drain is not None:
            # A second signal: what waits is answered 503 now, so the drain ends at once
            # (uvicorn's own exit would cut the requests off without an answer).
            logger.info(
                "received %s again: answering what is left with 503", signal.Signals(sig).name
            )
            self._cut_short = True
            self._loop.call_soon_threadsafe(self._cut_drain_short)
            return
        logger.info("received %s: draining", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _cut_drain_short(self) -> None:
        self._stop = asyncio.create_task(self._state.batcher.stop())

    def _start_drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        await self._state.drain()
        self.should_exit = True


def _load_factory(spec: str, what: str) -> Callable[[RuntimeConfig], Any]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what} factory {spec!r} must look like 'module:function'")
    factory: Callable[[RuntimeConfig], Any] = getattr(
        importlib.import_module(module_name), attribute
    )
    return factory


def load_engine_factory(spec: str) -> Callable[[RuntimeConfig], Engine]:
    """Import `module:function`, a callable that builds the engine from the config."""
    return _load_factory(spec, "engine")


def load_text_encoder_factory(spec: str) -> Callable[[RuntimeConfig], TextEncoder]:
    """Import `module:function`, a callable that builds the tokenizer from the config."""
    return _load_factory(spec, "text encoder")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sas_runtime", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the HTTP API")
    engine = commands.add_parser("engine", help="(started by serve) the engine process")
    frontend = commands.add_parser("frontend", help="(started by serve) an HTTP front-end")
    for command in (serve, engine, frontend):
        command.add_argument(
            "--config",
            default=os.environ.get(CONFIG_ENV),
            help=f"runtime config file, YAML or JSON (default: ${CONFIG_ENV})",
        )
        command.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    for command in (serve, frontend):
        command.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
        command.add_argument("--port", type=int, help="port (default: server.port from the config)")
        command.add_argument(
            "--text-encoder",
            default=DEFAULT_TEXT_ENCODER,
            help="tokenizer factory of the front-end processes, as module:function taking the "
            f"config (default {DEFAULT_TEXT_ENCODER})",
        )
    for command in (serve, engine):
        command.add_argument(
            "--engine",
            default=DEFAULT_ENGINE,
            help=f"engine factory as module:function taking the config (default {DEFAULT_ENGINE})",
        )
    for command in (engine, frontend):
        command.add_argument(
            "--address", required=True, help="the engine socket (a Unix socket path)"
        )
    return parser


def _uvicorn_config(app: Any, args: argparse.Namespace, config: RuntimeConfig) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=args.host,
        port=_port(args, config),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=_SHUTDOWN_GRACE_SECONDS,
        backlog=_LISTEN_BACKLOG,
    )


def _port(args: argparse.Namespace, config: RuntimeConfig) -> int:
    port: int = args.port if args.port is not None else config.server.port
    return port


def _serve(args: argparse.Namespace, config: RuntimeConfig) -> int:
    if config.server.frontends > 1:
        from sas_runtime.supervisor import RuntimeCommand, Supervisor

        command = RuntimeCommand(
            config=args.config,
            host=args.host,
            port=_port(args, config),
            engine=args.engine,
            text_encoder=args.text_encoder,
            log_level=args.log_level,
            frontends=config.server.frontends,
        )
        return Supervisor(command).run()
    try:
        app = create_app(config, load_engine_factory(args.engine)(config))
    except ConfigError as exc:
        print(f"sas_runtime: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"sas_runtime: cannot build the engine: {exc}", file=sys.stderr)
        return 1
    server = DrainingServer(_uvicorn_config(app, args, config), serving_state(app))
    server.run()
    return 0 if server.started else 3


def _engine(args: argparse.Namespace, config: RuntimeConfig) -> int:
    try:
        engine = load_engine_factory(args.engine)(config)
    except Exception as exc:
        print(f"sas_runtime: cannot build the engine: {exc}", file=sys.stderr)
        return 1
    uvloop.run(serve_engine(config, engine, args.address))
    return 0


def _frontend(args: argparse.Namespace, config: RuntimeConfig) -> int:
    from sas_runtime.engine_client import EngineClient, RemoteEngine

    try:
        text_encoder = load_text_encoder_factory(args.text_encoder)(config)
    except Exception as exc:
        print(f"sas_runtime: cannot load the tokenizer: {exc}", file=sys.stderr)
        return 1
    engine_lost = False

    def stop_without_engine() -> None:
        nonlocal engine_lost
        engine_lost = True
        server.should_exit = True

    client = EngineClient(args.address, on_lost=stop_without_engine)
    try:
        app = create_frontend_app(config, RemoteEngine(client, text_encoder), client)
    except ConfigError as exc:
        print(f"sas_runtime: {exc}", file=sys.stderr)
        return 2
    server = DrainingServer(
        _uvicorn_config(app, args, config), serving_state(app), watch_parent=True
    )
    server.run(sockets=[_shared_listener(args.host, _port(args, config))])
    if engine_lost:
        return 1
    return 0 if server.started else 3


def _shared_listener(host: str, port: int) -> socket.socket:
    """A socket on host:port that every front-end binds (SO_REUSEPORT): the kernel spreads new
    connections over the front-end processes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((host, port))
    return listener


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
    except ConfigError as exc:
        print(f"sas_runtime: {exc}", file=sys.stderr)
        return 2
    run = {"serve": _serve, "engine": _engine, "frontend": _frontend}[args.command]
    return run(args, config)


if __name__ == "__main__":
    sys.exit(main())
