"""The front-end side of a multi-process runtime: the batcher interface over the engine socket.

Each HTTP front-end process parses, validates and tokenizes requests itself and sends the work
to the engine process (`sas_runtime.engine_server`) over one Unix socket connection; replies
are matched to waiting requests by id. `EngineClient` stands in for the batcher (`WorkQueue`) and
`RemoteEngine` for the engine the app reads (its info, refreshed every second, and the
tokenizer, which runs here). A front-end whose engine connection ends stops (`on_lost`): the
supervisor then takes the pod down, as it does when the engine process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sas_runtime.batcher import BatcherClosedError, DeadlineExceededError
from sas_runtime.engine import AttentionInput, EncodedText, EngineInfo, TextEncoder
from sas_runtime.engine_ipc import (
    EngineUnavailableError,
    MessageProtocol,
    Op,
    raise_outcome,
    write_message,
)

__all__ = ["EngineClient", "RemoteEngine"]

logger = logging.getLogger("sas_runtime.frontend")

_HELLO_SECONDS = 0.2
_INFO_SECONDS = 1.0
_REPLY_GRACE_SECONDS = 1.0
"""How long past a request's deadline to wait for the engine's own answer (it answers 504
itself at the deadline) before answering 504 here."""


class EngineClient:
    """The engine process's batcher, as seen from one front-end process."""

    def __init__(self, address: str, *, on_lost: Callable[[], None] | None = None) -> None:
        self._address = address
        self._on_lost = on_lost
        self._connection: MessageProtocol | None = None
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: list[tuple[int, Op, object, float]] = []
        self._closed = False
        self.info: EngineInfo | None = None

    async def start(self) -> None:
        """Connect (the engine process may not listen yet), then wait, however long the
        engine's warm-up takes, until it is ready."""
        loop = asyncio.get_running_loop()
        while self._connection is None:
            try:
                _, self._connection = await loop.create_unix_connection(
                    lambda: MessageProtocol(self._received, self._lost), self._address
                )
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(_HELLO_SECONDS)
        while self.info is None:
            with contextlib.suppress(TimeoutError):
                self.info = await self._call("hello", None, seconds=_HELLO_SECONDS)
            if self.info is None:  # the engine is still warming up
                await asyncio.sleep(_HELLO_SECONDS)
        self._tasks.append(asyncio.create_task(self._refresh_info(), name="sas-frontend-info"))

    async def stop(self) -> None:
        """Fail whatever still waits for the engine with BatcherClosedError; disconnect."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_waiting(BatcherClosedError("the runtime is shutting down"))
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.close()

    def _fail_waiting(self, error: Exception) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()

    async def embed(self, texts: Sequence[EncodedText], *, deadline: float) -> np.ndarray:
        """Embeddings of `texts` from the engine process, by `deadline` (this loop's clock)."""
        result: np.ndarray = await self._work("embed", list(texts), deadline)
        return result

    async def attend(self, item: AttentionInput, *, deadline: float) -> torch.Tensor:
        """The attention output for `item` from the engine process, by `deadline`."""
        result: torch.Tensor = await self._work("attend", item, deadline)
        return result

    async def _work(self, op: Op, payload: object, deadline: float) -> Any:
        if self._closed:
            raise BatcherClosedError("the runtime is shutting down")
        seconds = deadline - asyncio.get_running_loop().time()
        try:
            return await self._call(op, payload, seconds=seconds, grace=_REPLY_GRACE_SECONDS)
        except TimeoutError:
            raise DeadlineExceededError(
                f"no result within the request's deadline ({seconds * 1000:.0f} ms)"
            ) from None

    async def _call(self, op: Op, payload: object, *, seconds: float, grace: float = 0.0) -> Any:
        """Send one request; its reply's value, or its error raised, within `seconds` (the
        engine's own limit for the work) plus `grace`. Requests made in one turn of the event
        loop leave as one message."""
        if self._transport() is None:
            raise EngineUnavailableError("not connected to the engine process")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append((request_id, op, payload, max(seconds, 0.0)))
        try:
            return await asyncio.wait_for(future, seconds + grace)
        finally:
            self._waiting.pop(request_id, None)

    def _transport(self) -> asyncio.WriteTransport | None:
        """The engine connection's transport while it is open, else None."""
        transport = self._connection.transport if self._connection is not None else None
        return None if transport is None or transport.is_closing() else transport

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if (transport := self._transport()) is not None:
            write_message(transport, outbox)

    def _received(self, _: MessageProtocol, replies: list[tuple[int, str, object]]) -> None:
        for request_id, outcome, value in replies:
            future = self._waiting.get(request_id)
            if future is None or future.done():
                continue
            if outcome == "ok":
                future.set_result(value)
            else:
                try:
                    raise_outcome(outcome, value)
                except Exception as exc:
                    future.set_exception(exc)

    def _lost(self, _: MessageProtocol, __: Exception | None) -> None:
        self._fail_waiting(EngineUnavailableError("the engine process is gone"))
        if not self._closed:
            logger.error("the engine process closed its connection")
            if self._on_lost is not None:
                self._on_lost()

    async def _refresh_info(self) -> None:
        """Keep `info` current: the guard may switch the engine to dense at any time, and
        /v1/models (and so the CR status) must say so from every front-end."""
        while True:
            await asyncio.sleep(_INFO_SECONDS)
            try:
                info = await self._call("info", None, seconds=_INFO_SECONDS)
            except TimeoutError:
                logger.warning("the engine process did not answer within %.0f s", _INFO_SECONDS)
                continue
            except EngineUnavailableError:
                return  # the connection is gone: `_lost` has said so
            if info is not None:
                self.info = info


class RemoteEngine:
    """The engine as the HTTP app of a front-end reads it: the engine process's info and this
    process's tokenizer."""

    def __init__(self, client: EngineClient, text_encoder: TextEncoder) -> None:
        self._client = client
        self._text_encoder = text_encoder

    @property
    def info(self) -> EngineInfo:
        if self._client.info is None:
            raise EngineUnavailableError("the engine process is still warming up")
        return self._client.info

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        return self._text_encoder.encode(texts)
