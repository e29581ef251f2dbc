"""The wire between HTTP front-end processes and the engine process of one pod.

A Unix stream socket per front-end; on it, messages are pickled (protocol 5) with the bytes of
large tensors and arrays carried as out-of-band frames, so a 2 MB attention tensor crosses
without being copied into the pickle. A message on the socket is its frame count (u32), each
frame's length (u64), then the frames. Both ends are processes of the same pod started by the same supervisor;
the socket lives in a directory only the pod's user can open, so unpickling trusts the peer as
it trusts its own code. (ZeroMQ was measured first: a round trip cost 144 us of CPU against
15 us on a plain socket with uvloop.)

A message holds a list of requests `(request_id, op, payload, timeout_seconds)` or of replies
`(request_id, outcome, value)`. Ops: `hello` (readiness and EngineInfo, or None while warming up), `info`, `embed`
(a list of EncodedText), `attend` (one AttentionInput). Outcomes: `ok` or one of `ERRORS`.
"""

from __future__ import annotations

import asyncio
import copyreg
import io
import pickle
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch

if TYPE_CHECKING:
    from typing_extensions import Buffer

from sas_runtime.batcher import (
    BatcherClosedError,
    DeadlineExceededError,
    QueueFullError,
    RateLimitedError,
)
from sas_runtime.engine import EncodedText

__all__ = [
    "ERRORS",
    "EngineUnavailableError",
    "MessageProtocol",
    "Op",
    "error_outcome",
    "pack",
    "raise_outcome",
    "unpack",
    "write_message",
]

Op = Literal["hello", "info", "embed", "attend"]


class EngineUnavailableError(Exception):
    """The engine process is not ready (warming up) or does not answer."""


ERRORS: dict[str, type[Exception]] = {
    "queue_full": QueueFullError,
    "deadline": DeadlineExceededError,
    "closed": BatcherClosedError,
    "rate_limited": RateLimitedError,
    "invalid": ValueError,
    "unavailable": EngineUnavailableError,
}
"""Reply outcomes that are errors, and the exception each raises again in the front-end."""


def _tensor_from_bytes(
    data: memoryview | bytes | bytearray, dtype: str, shape: tuple[int, ...]
) -> torch.Tensor:
    torch_dtype = getattr(torch, dtype)
    if not len(data):
        return torch.empty(shape, dtype=torch_dtype)
    array = np.frombuffer(data, dtype=np.uint8)
    # A frame read off the socket is a buffer of its own: the tensor takes it over. The bytes
    # of a small tensor pickled in-band are read-only: those are copied.
    raw = torch.from_numpy(array if array.flags.writeable else array.copy())
    return raw.view(torch_dtype).reshape(shape)


def _reduce_tensor(tensor: torch.Tensor) -> tuple[Any, tuple[Any, ...]]:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    data = pickle.PickleBuffer(cast("Buffer", flat.view(torch.uint8).numpy()))
    return _tensor_from_bytes, (data, str(flat.dtype).removeprefix("torch."), tuple(tensor.shape))


def _reduce_encoded_text(text: EncodedText) -> tuple[Any, tuple[Any, ...]]:
    # A frozen, slotted dataclass pickles through __setstate__, field by field; the
    # constructor is cheaper.
    return EncodedText, (text.ids, text.truncated)


class _Pickler(pickle.Pickler):
    dispatch_table = copyreg.dispatch_table.copy()
    dispatch_table[torch.Tensor] = _reduce_tensor
    dispatch_table[EncodedText] = _reduce_encoded_text


_IN_BAND_BYTES = 64 << 10
"""Buffers smaller than this (an embedding row is 1.5 KB) travel inside the pickle: a frame of
its own costs more than the copy."""


def pack(message: object) -> list[bytes | pickle.PickleBuffer]:
    """Frames for `message`: the pickle, then the bytes of each large tensor or array."""
    buffers: list[pickle.PickleBuffer] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < _IN_BAND_BYTES:
            return True
        buffers.append(buffer)
        return False

    stream = io.BytesIO()
    _Pickler(stream, protocol=5, buffer_callback=out_of_band).dump(message)
    return [stream.getvalue(), *buffers]


def unpack(frames: Sequence[bytes | bytearray | memoryview]) -> Any:
    """The message `pack` made these frames from."""
    return pickle.loads(frames[0], buffers=frames[1:])


_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")


def write_message(transport: asyncio.WriteTransport, message: object) -> None:
    """Queue `message` on the connection (no wait: the transport buffers it)."""
    frames = pack(message)
    lengths = [memoryview(frame).nbytes for frame in frames]
    header = _COUNT.pack(len(frames)) + b"".join(_LENGTH.pack(n) for n in lengths)
    transport.writelines([header, *(memoryview(frame).cast("B") for frame in frames)])


_STAGING_BYTES = 256 << 10
"""Reads land in a staging buffer of this size, except the rest of a frame at least this large,
which the socket writes straight into the frame's own buffer."""


class MessageProtocol(asyncio.BufferedProtocol):
    """One end of a connection: `on_made` is called once it is up, each message read goes to
    `on_message`, and `on_lost` is called once when it ends (with the error, if any). Small
    reads go through a staging buffer; a large frame (an attention tensor) is received straight
    into an uninitialised array of its size, which the unpickled tensor then uses without
    another copy."""

    def __init__(
        self,
        on_message: Callable[[MessageProtocol, Any], None],
        on_lost: Callable[[MessageProtocol, Exception | None], None] | None = None,
        on_made: Callable[[MessageProtocol], None] | None = None,
    ) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_made = on_made
        self._staging = memoryview(bytearray(_STAGING_BYTES))
        self._direct = False
        self._begin_message()

    def _begin_message(self) -> None:
        self._stage: Literal["count", "lengths", "frames"] = "count"
        self._lengths: list[int] = []
        self._frames: list[bytearray | memoryview] = []
        self._expect(_COUNT.size)

    def _expect(self, size: int) -> None:
        # A large frame is written whole by the socket: it needs no zeroing first (bytearray
        # zero-fills, 50 us of a 2 MB frame's 180 us here).
        self._target: bytearray | memoryview = (
            np.empty(size, dtype=np.uint8).data if size >= _STAGING_BYTES else bytearray(size)
        )
        self._filled = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.WriteTransport", transport)
        if self._on_made is not None:
            self._on_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._on_lost is not None:
            self._on_lost(self, exc)

    def get_buffer(self, sizehint: int) -> memoryview:
        self._direct = len(self._target) - self._filled >= _STAGING_BYTES
        if self._direct:
            return memoryview(self._target)[self._filled :]
        return self._staging

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct:
            self._filled += nbytes
            self._complete_targets()
            return
        position = 0
        while position < nbytes:
            take = min(len(self._target) - self._filled, nbytes - position)
            self._target[self._filled : self._filled + take] = self._staging[
                position : position + take
            ]
            self._filled += take
            position += take
            self._complete_targets()

    def _complete_targets(self) -> None:
        """Move past every full target (an empty frame is full at once); deliver a message
        once its last frame is in."""
        while self._filled == len(self._target):
            if self._stage == "count":
                (count,) = _COUNT.unpack(self._target)
                self._stage = "lengths"
                self._expect(_LENGTH.size * count)
                continue
            if self._stage == "lengths":
                self._lengths = [n for (n,) in _LENGTH.iter_unpack(self._target)]
                self._stage = "frames"
            else:
                self._frames.append(self._target)
            if len(self._frames) == len(self._lengths):
                frames = self._frames
                self._begin_message()
                self._on_message(self, unpack(frames))
                return
            self._expect(self._lengths[len(self._frames)])


def error_outcome(exc: Exception) -> tuple[str, object] | None:
    """The reply outcome and value for an error the front-end turns into an HTTP answer; None
    for an engine failure (a bug or a broken device), which the engine process logs."""
    for outcome, kind in ERRORS.items():
        if isinstance(exc, kind):
            if isinstance(exc, RateLimitedError):
                return outcome, (str(exc), exc.retry_after)
            return outcome, str(exc)
    return None


def raise_outcome(outcome: str, value: object) -> None:
    """Raise in the front-end the error a reply carries."""
    if outcome == "rate_limited":
        message, retry_after = cast("tuple[str, float]", value)
        raise RateLimitedError(message, retry_after=retry_after)
    kind = ERRORS.get(outcome)
    if kind is None:
        raise RuntimeError(f"the engine failed on this request: {value}")
    raise kind(value)
