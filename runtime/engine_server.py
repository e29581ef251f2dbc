"""The engine process of a multi-process runtime: one engine and its batcher behind a socket.

HTTP front-end processes (`sas_runtime.engine_client`) send work here; the batcher gathers
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
    """Answers front-end requests on a ROUTER socket bound at `address`.

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
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(address)
        self.ready = False
        self._greeted: set[bytes] = set()
        self._outbox: dict[bytes, list[tuple[int, str, object]]] = {}
        self._sending: set[asyncio.Future[Any]] = set()

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
            await asyncio.sleep(0)
            if self._sending:
                await asyncio.wait(self._sending, timeout=1)
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
            for request in unpack([frame.buffer for frame in frames[1:]]):
                self._dispatch(identity, *request)

    def _dispatch(
        self, identity: bytes, request_id: int, op: str, payload: Any, seconds: float
    ) -> None:
        if op in ("hello", "info"):
            if op == "hello":
                self._greeted.add(identity)
            everyone = len(self._greeted) >= self._frontends or op == "info"
            info = self._engine.info if self.ready and everyone else None
            self._reply(identity, request_id, "ok", info)
            return
        if not self.ready:
            self._reply(identity, request_id, "unavailable", "the engine is warming up")
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
            self._reply_error(identity, request_id, op, exc)
            return
        future.add_done_callback(functools.partial(self._done, identity, request_id, op))

    def _done(
        self, identity: bytes, request_id: int, op: str, future: asyncio.Future[list[object]]
    ) -> None:
        if future.cancelled():
            self._reply(identity, request_id, "closed", "the runtime is shutting down")
        elif (error := future.exception()) is not None:
            self._reply_error(identity, request_id, op, error)
        elif op == "embed":
            rows = future.result()
            self._reply(identity, request_id, "ok", np.stack([np.asarray(r) for r in rows]))
        else:
            self._reply(identity, request_id, "ok", future.result()[0])

    def _reply_error(self, identity: bytes, request_id: int, op: str, error: BaseException) -> None:
        outcome = error_outcome(error) if isinstance(error, Exception) else None
        if outcome is None:
            logger.error("engine failure on a %s request", op, exc_info=error)
            outcome = ("failed", f"{type(error).__name__}: {error}")
        self._reply(identity, request_id, *outcome)

    def _reply(self, identity: bytes, request_id: int, outcome: str, value: object) -> None:
        """Queue a reply; the replies queued in this turn of the loop leave together."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.setdefault(identity, []).append((request_id, outcome, value))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for identity, replies in outbox.items():
            sent = asyncio.ensure_future(
                self._socket.send_multipart([identity, *pack(replies)], copy=False)
            )
            self._sending.add(sent)
            sent.add_done_callback(self._sent)

    def _sent(self, sent: asyncio.Future[Any]) -> None:
        self._sending.discard(sent)
        if not sent.cancelled() and (error := sent.exception()) is not None:
            logger.error("cannot send replies to a front-end: %s", error)


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
