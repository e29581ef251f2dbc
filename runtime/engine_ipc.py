"""The wire between HTTP front-end processes and the engine process of one pod.

Messages are pickled (protocol 5) with tensor and array bytes carried as out-of-band frames, so
a 2 MB attention tensor crosses the socket without being copied into the pickle. Both ends are
processes of the same pod started by the same supervisor; the socket lives in a directory only
the pod's user can open, so unpickling trusts the peer as it trusts its own code.

A message holds a list of requests `(request_id, op, payload, timeout_seconds)` or of replies
`(request_id, outcome, value)`. Ops: `hello` (readiness and EngineInfo, or None while warming up), `info`, `embed`
(a list of EncodedText), `attend` (one AttentionInput). Outcomes: `ok` or one of `ERRORS`.
"""

from __future__ import annotations

import copyreg
import io
import pickle
from collections.abc import Sequence
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

__all__ = [
    "ERRORS",
    "EngineUnavailableError",
    "Op",
    "error_outcome",
    "pack",
    "raise_outcome",
    "unpack",
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
    data: memoryview | bytes, dtype: str, shape: tuple[int, ...]
) -> torch.Tensor:
    torch_dtype = getattr(torch, dtype)
    if not len(data):
        return torch.empty(shape, dtype=torch_dtype)
    raw = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    return raw.view(torch_dtype).reshape(shape)


def _reduce_tensor(tensor: torch.Tensor) -> tuple[Any, tuple[Any, ...]]:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    data = pickle.PickleBuffer(cast("Buffer", flat.view(torch.uint8).numpy()))
    return _tensor_from_bytes, (data, str(flat.dtype).removeprefix("torch."), tuple(tensor.shape))


class _Pickler(pickle.Pickler):
    dispatch_table = copyreg.dispatch_table.copy()
    dispatch_table[torch.Tensor] = _reduce_tensor


def pack(message: object) -> list[bytes | pickle.PickleBuffer]:
    """Frames for `message`: the pickle, then each tensor's or array's bytes."""
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    _Pickler(stream, protocol=5, buffer_callback=buffers.append).dump(message)
    return [stream.getvalue(), *buffers]


def unpack(frames: Sequence[bytes | memoryview]) -> Any:
    """The message `pack` made these frames from."""
    return pickle.loads(frames[0], buffers=frames[1:])


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
