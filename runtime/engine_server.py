"""The engine process of a multi-process runtime: one engine and its batcher behind a socket.

HTTP front-end processes (`sas_runtime.engine_client`) send work here; the batcher gathers
work from all of them into the same batches, so the GPU sees one stream however many processes
parse HTTP. The rate limit and the queue bound live here too, so they hold for the pod as a
whole. The process warms up, then answers `hello` with the engine's info; on SIGTERM (sent by
the supervisor once every front-end has drained) it stops the batcher and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

import zmq
import zmq.asyncio

from sas_runtime.batcher import Batcher
from sas_runtime.config import RuntimeConfig
from sas_runtime.engine import AttentionInput, EncodedText, Engine
from sas_runtime.engine_ipc import error_outcome, pack, unpack
from sas_runtime.metrics import RuntimeMetrics
from sas_runtime.rate_limit import TokenBucket

__all__ = ["EngineServer", "exit_with_parent", "serve_engine"]

logger = logging.getLogger("sas_runtime.engine")

_PARENT_CHECK_SECONDS = 1.0


class EngineServer:
    """Answers front-end requests on a ROUTER socket bound at `address`."""

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
        bucket = TokenBucket(config.rate_limit.requests_per_second, config.rate_limit.burst)
        self.batcher = Batcher(engine, config.batching, self._metrics, rate_limit=bucket)
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(address)
        self.ready = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, stop: asyncio.Event) -> None:
        """Warm up, then answer requests until `stop` is set; then fail what is still queued
        and close the socket."""
        receiver = asyncio.create_task(self._receive(), name="sas-engine-receive")
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
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=1)
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            self.close()

    def close(self) -> None:
        """Close the socket (`serve` does this when it stops)."""
        self._socket.close()
        self._context.term()

    async def _receive(self) -> None:
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            identity = frames[0].bytes
            request_id, op, payload, seconds = unpack([f.buffer for f in frames[1:]])
            if op in ("hello", "info"):
                info = self._engine.info if self.ready else None
                await self._reply(identity, request_id, "ok", info)
            elif not self.ready:
                await self._reply(identity, request_id, "unavailable", "the engine is warming up")
            else:
                task = asyncio.create_task(self._run(identity, request_id, op, payload, seconds))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(
        self, identity: bytes, request_id: int, op: str, payload: Any, seconds: float
    ) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        try:
            if op == "embed":
                texts = [text for text in payload if isinstance(text, EncodedText)]
                result: object = await self.batcher.embed(texts, deadline=deadline)
            elif op == "attend" and isinstance(payload, AttentionInput):
                result = await self.batcher.attend(payload, deadline=deadline)
            else:
                raise ValueError(f"unknown engine request {op!r}")
        except Exception as exc:
            outcome = error_outcome(exc)
            if outcome is None:
                logger.exception("engine failure on a %s request", op, exc_info=exc)
                outcome = ("failed", f"{type(exc).__name__}: {exc}")
            await self._reply(identity, request_id, *outcome)
            return
        await self._reply(identity, request_id, "ok", result)

    async def _reply(self, identity: bytes, request_id: int, outcome: str, value: object) -> None:
        await self._socket.send_multipart(
            [identity, *pack((request_id, outcome, value))], copy=False
        )


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
