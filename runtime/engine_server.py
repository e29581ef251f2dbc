"""The engine process of a multi-process runtime: one engine and its batcher behind a socket.

HTTP front-end processes (`sas_runtime.engine_client`) connect to a Unix socket and send work
here; the batcher gathers
work from all of them into the same batches, so the GPU sees one stream however many processes
parse HTTP. The rate limit and the queue bound live here too, so they hold for the pod as a
whole. The process warms up, then answers `hello` with the engine's info; on SIGTERM (sent by
the supervisor once every front-end has drained) it stops the batcher and exits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from typing import Any

import numpy as np

from sas_runtime.batcher import Batcher
from sas_runtime.config import RuntimeConfig
from sas_runtime.engine import AttentionInput, EncodedText, Engine
from sas_runtime.engine_ipc import MessageProtocol, error_outcome, write_message
from sas_runtime.metrics import RuntimeMetrics
from sas_runtime.rate_limit import TokenBucket

__all__ = ["EngineServer", "exit_with_parent", "serve_engine"]

logger = logging.getLogger("sas_runtime.engine")

_PARENT_CHECK_SECONDS = 1.0
_REPLY_FLUSH_SECONDS = 0.05


class EngineServer:
    """Answers front-end requests on a Unix socket at `address` (a path).

    Requests arrive in lists (a front-end sends what its event loop gathered in one turn) and
    go straight into the batcher; replies to one front-end that are ready in the same turn
    leave as one message, so a batch of 64 costs a few messages, not 128. The engine counts
    as ready for the front-ends only once all `server.frontends` of them have said hello, so
    no front-end reports ready while another is not yet listening."""

    def __init__(
        self,
        config: RuntimeConfig,
        engine: Engine,
        address: str,
        *,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self._engine = engine
        self._metrics = metrics or RuntimeMetrics()
        self._frontends = config.server.frontends
        bucket = TokenBucket(config.rate_limit.requests_per_second, config.rate_limit.burst)
        self.batcher = Batcher(engine, config.batching, self._metrics, rate_limit=bucket)
        self._path = address
        self._server: asyncio.Server | None = None
        self.ready = False
        self._connections: set[MessageProtocol] = set()
        self._greeted: set[MessageProtocol] = set()
        self._outbox: dict[MessageProtocol, list[tuple[int, str, object]]] = {}

    async def serve(self, stop: asyncio.Event) -> None:
        """Listen, warm up, then answer requests until `stop` is set; then fail what is still
        queued and close the socket."""
        await self.listen()
        try:
            await self.batcher.start()
            self.ready = True
            self._metrics.ready.set(1)
            logger.info("engine ready: %s", self._engine.info)
            await stop.wait()
        finally:
            self.ready = False
            self._metrics.ready.set(0)
            await self.batcher.stop()
            # The work the stop failed answers "closed" through callbacks a few loop turns
            # away: let those replies leave before the connections close.
            await asyncio.sleep(_REPLY_FLUSH_SECONDS)
            await self.close()

    async def listen(self) -> None:
        """Open the socket (`serve` does this first); front-ends may connect from now on."""
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: MessageProtocol(self._received, self._lost, self._connections.add), self._path
        )

    async def close(self) -> None:
        """Close the socket and every front-end's connection."""
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                if connection.transport is not None:
                    connection.transport.close()
            await self._server.wait_closed()

    def _received(self, connection: MessageProtocol, requests: list[Any]) -> None:
        for request in requests:
            self._dispatch(connection, *request)

    def _lost(self, connection: MessageProtocol, _: Exception | None) -> None:
        self._connections.discard(connection)
        self._greeted.discard(connection)

    def _dispatch(
        self,
        connection: MessageProtocol,
        request_id: int,
        op: str,
        payload: Any,
        seconds: float,
    ) -> None:
        if op in ("hello", "info"):
            if op == "hello":
                self._greeted.add(connection)
            everyone = len(self._greeted) >= self._frontends or op == "info"
            info = self._engine.info if self.ready and everyone else None
            self._reply(connection, request_id, "ok", info)
            return
        if not self.ready:
            self._reply(connection, request_id, "unavailable", "the engine is warming up")
            return
        deadline = asyncio.get_running_loop().time() + seconds
        try:
            if op == "embed":
                texts = [text for text in payload if isinstance(text, EncodedText)]
                future = self.batcher.submit_embed(texts, deadline=deadline)
            elif op == "attend" and isinstance(payload, AttentionInput):
                future = self.batcher.submit_attend(payload, deadline=deadline)
            else:
                raise ValueError(f"unknown engine request {op!r}")
        except Exception as exc:
            self._reply_error(connection, request_id, op, exc)
            return
        future.add_done_callback(functools.partial(self._done, connection, request_id, op))

    def _done(
        self,
        connection: MessageProtocol,
        request_id: int,
        op: str,
        future: asyncio.Future[list[object]],
    ) -> None:
        if future.cancelled():
            self._reply(connection, request_id, "closed", "the runtime is shutting down")
        elif (error := future.exception()) is not None:
            self._reply_error(connection, request_id, op, error)
        elif op == "embed":
            rows = future.result()
            self._reply(connection, request_id, "ok", np.stack([np.asarray(r) for r in rows]))
        else:
            self._reply(connection, request_id, "ok", future.result()[0])

    def _reply_error(
        self, connection: MessageProtocol, request_id: int, op: str, error: BaseException
    ) -> None:
        outcome = error_outcome(error) if isinstance(error, Exception) else None
        if outcome is None:
            logger.error("engine failure on a %s request", op, exc_info=error)
            outcome = ("failed", f"{type(error).__name__}: {error}")
        self._reply(connection, request_id, *outcome)

    def _reply(
        self, connection: MessageProtocol, request_id: int, outcome: str, value: object
    ) -> None:
        """Queue a reply; the replies queued in this turn of the loop leave together."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.setdefault(connection, []).append((request_id, outcome, value))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for connection, replies in outbox.items():
            transport = connection.transport
            if transport is not None and not transport.is_closing():
                write_message(transport, replies)


async def exit_with_parent(stop: asyncio.Event) -> None:
    """Set `stop` when the process that started this one is gone (so a killed supervisor
    leaves nothing behind)."""
    parent = os.getppid()
    while True:
        await asyncio.sleep(_PARENT_CHECK_SECONDS)
        if os.getppid() != parent:
            break
    logger.warning("the supervisor (pid %d) is gone: stopping", parent)
    stop.set()


async def serve_engine(config: RuntimeConfig, engine: Engine, address: str) -> None:
    """Run the engine process until SIGTERM (or its supervisor is gone)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    watchdog = asyncio.create_task(exit_with_parent(stop))
    try:
        await EngineServer(config, engine, address).serve(stop)
    finally:
        watchdog.cancel()
