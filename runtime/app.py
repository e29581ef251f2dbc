"""The HTTP app: routes, admission (auth, readiness, rate limit, body size), OpenAI-style errors,
and a lifespan that warms the engine up and drains in-flight work."""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
import torch
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sas_runtime.api import (
    AttentionRequest,
    AttentionResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    Probe,
)
from sas_runtime.auth import BearerAuth
from sas_runtime.batcher import (
    Batcher,
    BatcherClosedError,
    DeadlineExceededError,
    QueueFullError,
    RateLimitedError,
    WorkQueue,
)
from sas_runtime.config import LongInputPolicy, PatternConfig, RuntimeConfig
from sas_runtime.engine import AttentionInput, Engine, EngineView
from sas_runtime.engine_ipc import EngineUnavailableError
from sas_runtime.metrics import CONTENT_TYPE_LATEST, RuntimeMetrics
from sas_runtime.rate_limit import TokenBucket
from sas_runtime.tensor_codec import (
    TensorError,
    check_attention_tensors,
    decode_payload,
    decode_safetensors,
    encode_payload,
    encode_safetensors,
)

__all__ = [
    "ApiError",
    "OrjsonResponse",
    "ServingState",
    "create_app",
    "create_frontend_app",
    "serving_state",
]

logger = logging.getLogger("sas_runtime")

_WORK_PATHS = frozenset({"/v1/embeddings", "/v1/attention"})
_BODY_SCOPE_KEY = "sas.body"
"""Where the admission middleware leaves a work request's body in the ASGI scope."""
_ENDPOINTS = frozenset(
    {*_WORK_PATHS, "/v1/models", "/healthz", "/readyz", "/metrics", "/openapi.json"}
)
_TIMEOUT_HEADER = "X-Request-Timeout-Ms"
_TIMEOUT_HEADER_BYTES = _TIMEOUT_HEADER.lower().encode()
_MAX_TIMEOUT_MS = 600_000
_SAFETENSORS_TYPES = ("application/octet-stream", "application/safetensors")
"""Media types of the safetensors form of /v1/attention; the answer comes in the request's."""
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 429, 503, 504)
}


class OrjsonResponse(JSONResponse):
    """JSON response serialised by orjson (numpy arrays included)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class ApiError(Exception):
    """A request the runtime answers with an error: status, OpenAI-style body, and the reason
    counted in `sas_rejections_total`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        reason: str = "invalid_request",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.reason = reason
        self.retry_after = retry_after

    def response(self) -> OrjsonResponse:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        body = {
            "error": {
                "type": _ERROR_TYPES.get(self.status, "invalid_request_error"),
                "message": self.message,
                "param": self.param,
                "code": self.reason,
            }
        }
        return OrjsonResponse(body, status_code=self.status, headers=headers)


class ServingState:
    """What the app serves with and whether it may take work: engine, batcher, limits,
    readiness, and the count of /v1 work requests in flight (what a drain waits for). The
    batcher runs here, or in the engine process when this is one of several front-ends."""

    def __init__(
        self,
        config: RuntimeConfig,
        engine: EngineView,
        metrics: RuntimeMetrics,
        batcher: WorkQueue,
    ) -> None:
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.batcher = batcher
        self.auth = (
            BearerAuth.from_file(config.server.auth_token_file)
            if config.server.auth_token_file
            else None
        )
        self.ready = False
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._drained: bool | None = None

    async def start(self) -> None:
        """Warm the engine up and start the batcher; then /readyz answers 200."""
        started = time.perf_counter()
        await self.batcher.start()
        self.ready = True
        self.metrics.ready.set(1)
        logger.info("warm after %.2f s: %s", time.perf_counter() - started, self.engine.info)

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self) -> bool:
        """Refuse new work, let in-flight work finish within `server.drainSeconds`; past that,
        answer what is left with 503. True when everything finished in time."""
        if self._drained is not None:
            return self._drained
        self.draining = True
        self.metrics.ready.set(0)
        logger.info("draining %d in-flight requests", self.in_flight)
        try:
            await asyncio.wait_for(self._idle.wait(), self.config.server.drain_seconds)
            self._drained = True
        except TimeoutError:
            logger.warning("drain time is up with %d requests in flight", self.in_flight)
            await self.batcher.stop()
            self._drained = False
        return self._drained

    async def stop(self) -> None:
        await self.drain()
        await self.batcher.stop()

    def deadline(self, timeout_ms: int | None) -> float:
        """The event loop's time by which a request must be answered."""
        default = self.config.batching.request_timeout_milliseconds
        ms = default if timeout_ms is None else min(timeout_ms, default)
        return asyncio.get_running_loop().time() + ms / 1000


def _route_path(scope: Scope) -> str:
    """The path the router matches: `path` less the `root_path` the app is mounted at (a
    server started with a root path puts it in front of every request's path)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


class _AdmissionMiddleware:
    """Before any route: bearer auth on /v1, readiness on work endpoints, the body-size limit;
    around every request: latency and status metrics. (The rate limit is the batcher's, so
    that it holds across front-end processes.)"""

    def __init__(self, app: ASGIApp, state: ServingState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        endpoint = path if path in _ENDPOINTS else "other"
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        entered = False
        try:
            if path.startswith("/v1/"):
                rejection = self._admit(scope, path)
                if rejection is None and path in _WORK_PATHS:
                    self.state.enter()
                    entered = True
                    receive, body, rejection = await self._read_body(scope, receive)
                    scope[_BODY_SCOPE_KEY] = body
                    if rejection is None and path == "/v1/embeddings" and scope["method"] == "POST":
                        request = _plain_embeddings_request(scope, body)
                        if request is not None:
                            response = await _answer(self.state, _embeddings(self.state, *request))
                            await response(scope, receive, send_and_record)
                            return
                if rejection is not None:
                    self.state.metrics.rejections.labels(reason=rejection.reason).inc()
                    await rejection.response()(scope, receive, send_and_record)
                    return
            await self.app(scope, receive, send_and_record)
        finally:
            if entered:
                self.state.leave()
            metrics = self.state.metrics
            metrics.request_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - started)
            metrics.requests.labels(endpoint=endpoint, code=str(status)).inc()

    def _admit(self, scope: Scope, path: str) -> ApiError | None:
        state = self.state
        if state.auth is not None:
            header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            if not state.auth.allows(header):
                return ApiError(401, "a valid bearer token is required", reason="unauthorized")
        if path not in _WORK_PATHS:
            return None
        if state.draining:
            return ApiError(503, "the runtime is shutting down", reason="draining", retry_after=1)
        if not state.ready:
            return ApiError(503, "the runtime is warming up", reason="not_ready", retry_after=1)
        return None

    async def _read_body(
        self, scope: Scope, receive: Receive
    ) -> tuple[Receive, bytes, ApiError | None]:
        """Read the whole body (at most `server.maxBodyBytes`); returns a receive that replays
        it to the route, and the body."""
        limit = self.state.config.server.max_body_bytes
        too_large = ApiError(
            413,
            f"the request body is larger than {limit} bytes (server.maxBodyBytes)",
            reason="too_large",
        )
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return receive, b"", too_large
        # Chunks are joined once at the end: growing one buffer re-copies it as it grows
        # (a 6 MB attention body cost ~20% of a front-end's CPU that way).
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive, b"", ApiError(400, "the client went away", reason="disconnected")
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return receive, b"", too_large
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay, body, None


_TYPE_MISMATCHES = frozenset(
    {"string_type", "list_type", "dict_type", "int_type", "float_type", "bool_type", "model_type"}
)
_LOCATION_KINDS = frozenset({"body", "header", "query", "path"})


def _is_field(part: object) -> bool:
    """Whether a pydantic error location part names a field or index (not a union branch such
    as 'constrained-str' or 'list[str]')."""
    return isinstance(part, int) or (
        isinstance(part, str) and part.isidentifier() and part not in _LOCATION_KINDS
    )


def _validation_message(errors: list[Any]) -> tuple[str, str | None]:
    """One readable line and the offending parameter from pydantic/FastAPI errors. Of a
    union's errors, one that is not a plain type mismatch says most."""
    specific = [e for e in errors if e.get("type") not in _TYPE_MISMATCHES] or errors
    first = specific[0]
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "malformed")
        return f"the body is not valid JSON: {detail}", None
    if loc[:1] == ("header",):
        param: str | None = str(loc[1])
    else:
        param = ".".join(str(p) for p in loc if _is_field(p)) or None
    message = first.get("msg", "invalid request")
    return (f"{param}: {message}" if param else message), param


def serving_state(app: FastAPI) -> ServingState:
    """The ServingState that `create_app` attached to `app`."""
    state: ServingState = app.state.serving
    return state


def create_app(
    config: RuntimeConfig,
    engine: Engine,
    *,
    metrics: RuntimeMetrics | None = None,
) -> FastAPI:
    """The runtime's ASGI app serving `engine` in this process as `config` says. Its lifespan
    warms the engine up (readiness follows) and, on shutdown, drains in-flight work."""
    metrics = metrics or RuntimeMetrics()
    bucket = TokenBucket(config.rate_limit.requests_per_second, config.rate_limit.burst)
    batcher = Batcher(engine, config.batching, metrics, rate_limit=bucket)
    return create_frontend_app(config, engine, batcher, metrics=metrics)


def create_frontend_app(
    config: RuntimeConfig,
    engine: EngineView,
    batcher: WorkQueue,
    *,
    metrics: RuntimeMetrics | None = None,
) -> FastAPI:
    """The runtime's ASGI app handing work to `batcher`: this process's, or the engine
    process's through `sas_runtime.engine_client`."""
    state = ServingState(config, engine, metrics or RuntimeMetrics(), batcher)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="sparse-attention runtime",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        docs_url=None,
        redoc_url=None,
    )
    app.state.serving = state
    app.add_middleware(_AdmissionMiddleware, state=state)
    _add_error_handlers(app, state)
    _add_routes(app, state)
    app.openapi = _openapi(app, engine)  # type: ignore[method-assign]
    return app


def _add_error_handlers(app: FastAPI, state: ServingState) -> None:
    async def refusal_or_failure(_: Request, exc: Exception) -> Response:
        return _error_response(state, exc)

    async def invalid_request(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(list(exc.errors()))
        return _error_response(state, ApiError(400, message, param=param))

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        response = ApiError(exc.status_code, str(exc.detail), reason="http_error").response()
        response.headers.update(exc.headers or {})  # a 405's Allow, say
        return response

    app.add_exception_handler(ApiError, refusal_or_failure)
    app.add_exception_handler(EngineUnavailableError, refusal_or_failure)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, refusal_or_failure)


_TimeoutHeader = Annotated[
    int | None,
    Header(
        alias=_TIMEOUT_HEADER,
        ge=1,
        le=_MAX_TIMEOUT_MS,
        description="Deadline in milliseconds (at most the configured default); past it: 504.",
    ),
]


async def _run(work: Awaitable[Any]) -> Any:
    """Await batcher work, turning its refusals into API errors."""
    try:
        return await work
    except RateLimitedError as exc:
        raise ApiError(429, str(exc), reason="rate_limited", retry_after=exc.retry_after) from exc
    except QueueFullError as exc:
        raise ApiError(429, str(exc), reason="queue_full", retry_after=1) from exc
    except EngineUnavailableError as exc:
        raise ApiError(503, str(exc), reason="not_ready", retry_after=1) from exc
    except DeadlineExceededError as exc:
        raise ApiError(504, str(exc), reason="deadline_exceeded") from exc
    except BatcherClosedError as exc:
        raise ApiError(503, str(exc), reason="draining", retry_after=1) from exc
    except ValueError as exc:
        raise ApiError(400, str(exc), reason="engine_refused") from exc


async def _embeddings(
    state: ServingState, body: EmbeddingsRequest, timeout_ms: int | None
) -> Response:
    """POST /v1/embeddings, for a request that parsed and validated."""
    config = state.config
    info = state.engine.info
    if body.model != info.model:
        raise ApiError(
            404,
            f"model {body.model!r} is not served here; this pod serves {info.model!r}",
            param="model",
            reason="model_not_found",
        )
    texts = [body.input] if isinstance(body.input, str) else body.input
    if len(texts) > config.server.max_inputs:
        raise ApiError(
            400,
            f"input holds {len(texts)} texts; the limit is {config.server.max_inputs} (server.maxInputs)",
            param="input",
        )
    if body.dimensions is not None and body.dimensions != info.embedding_dim:
        raise ApiError(
            400,
            f"dimensions must be {info.embedding_dim} for {info.model!r}",
            param="dimensions",
        )
    encoded = state.engine.encode(texts)
    if config.model.long_inputs is LongInputPolicy.REJECT:
        for index, text in enumerate(encoded):
            if text.truncated:
                raise ApiError(
                    413,
                    f"input[{index}] is longer than {info.max_sequence_length} tokens "
                    "(model.maxSequenceLength; model.longInputs is 'reject')",
                    param=f"input.{index}",
                    reason="too_long",
                )
    vectors = await _run(state.batcher.embed(encoded, deadline=state.deadline(timeout_ms)))
    if body.encoding_format == "base64":
        rows: list[Any] = [
            base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors
        ]
    else:
        rows = list(vectors)
    tokens = sum(len(text.ids) for text in encoded)
    return OrjsonResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)
            ],
            "model": info.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _plain_embeddings_request(
    scope: Scope, body: bytes
) -> tuple[EmbeddingsRequest, int | None] | None:
    """The request and its deadline header when an embeddings request is plainly valid (one
    JSON content type, a body that validates, at most one well-formed deadline header), so the
    middleware can answer it without FastAPI's routing and dependency layers; None sends it
    the long way, where anything malformed gets FastAPI's validation and its error."""
    content_type = timeout = None
    content_types = timeouts = 0
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type, content_types = value, content_types + 1
        elif name == _TIMEOUT_HEADER_BYTES:
            timeout, timeouts = value, timeouts + 1
    if (
        content_types != 1
        or content_type is None
        or content_type.split(b";")[0].strip().lower() != b"application/json"
    ):
        return None
    timeout_ms = None
    if timeouts:
        if timeouts > 1 or not (timeout and timeout.isdigit() and len(timeout) <= 6):
            return None
        timeout_ms = int(timeout)
        if not 1 <= timeout_ms <= _MAX_TIMEOUT_MS:
            return None
    try:
        return EmbeddingsRequest.model_validate_json(body), timeout_ms
    except ValidationError:
        return None


async def _answer(state: ServingState, work: Awaitable[Response]) -> Response:
    """The response to `work`, its errors answered as the app's exception handlers would."""
    try:
        return await work
    except Exception as exc:
        return _error_response(state, exc)


def _error_response(state: ServingState, exc: Exception) -> Response:
    """The answer to an exception out of a route: refusals (ApiError, the engine not ready)
    with their status, counted by reason; anything else a logged 500."""
    if isinstance(exc, EngineUnavailableError):
        exc = ApiError(503, str(exc), reason="not_ready", retry_after=1)
    if isinstance(exc, ApiError):
        state.metrics.rejections.labels(reason=exc.reason).inc()
        return exc.response()
    logger.exception("request failed", exc_info=exc)
    return ApiError(500, "the runtime failed on this request", reason="internal").response()


def _add_routes(app: FastAPI, state: ServingState) -> None:
    config = state.config

    @app.post(
        "/v1/embeddings",
        response_model=EmbeddingsResponse,
        responses=_ERROR_RESPONSES,
        summary="Embed texts (OpenAI-compatible)",
    )
    async def embeddings(body: EmbeddingsRequest, timeout_ms: _TimeoutHeader = None) -> Response:
        return await _embeddings(state, body, timeout_ms)

    @app.post(
        "/v1/attention",
        response_model=AttentionResponse,
        responses={
            **_ERROR_RESPONSES,
            200: {
                "content": {
                    media_type: {"schema": {"type": "string", "format": "binary"}}
                    for media_type in _SAFETENSORS_TYPES
                },
                "description": "The output as JSON (for a JSON request) or safetensors bytes "
                "holding `output` (for a safetensors request).",
            },
        },
        summary="Attention over q, k, v with the configured or given pattern",
    )
    async def attention(request: Request, timeout_ms: _TimeoutHeader = None) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        # The body the admission middleware read (Request.body() would join it with an empty
        # chunk: one more copy of a 6 MB body).
        body: bytes = request.scope[_BODY_SCOPE_KEY]
        limit = config.server.max_attention_elements
        try:
            if media_type in _SAFETENSORS_TYPES:
                q, k, v, document_ids, pattern = _attention_from_safetensors(body, limit)
            elif media_type == "application/json":
                q, k, v, document_ids, pattern = _attention_from_json(body, limit)
            else:
                raise ApiError(
                    415,
                    f"send application/json or {' or '.join(_SAFETENSORS_TYPES)}, not {media_type or 'no content type'}",
                    param="content-type",
                    reason="unsupported_media_type",
                )
            effective = pattern or config.attention.pattern
            check_attention_tensors(q, k, v, document_ids, pattern=effective, max_elements=limit)
        except TensorError as exc:
            raise ApiError(
                exc.status,
                str(exc),
                param=exc.param,
                reason="too_large" if exc.status == 413 else "invalid_request",
            ) from exc
        item = AttentionInput(
            q=q,
            k=k,
            v=v,
            pattern=pattern,
            document_ids=None if document_ids is None else document_ids.to(torch.int32),
            values_checked=True,  # check_attention_tensors above
        )
        output: torch.Tensor = await _run(
            state.batcher.attend(item, deadline=state.deadline(timeout_ms))
        )
        backend = state.engine.info.backend
        if media_type in _SAFETENSORS_TYPES:
            return Response(
                encode_safetensors(
                    {"output": output}, {"backend": backend, "pattern": effective.type.value}
                ),
                media_type=media_type,
            )
        return OrjsonResponse(
            {
                "output": encode_payload(output).model_dump(),
                "backend": backend,
                "pattern": effective.type.value,
            }
        )

    @app.get("/v1/models", response_model=ModelList, responses=_ERROR_RESPONSES)
    async def models() -> Response:
        info = state.engine.info
        card = ModelCard(
            id=info.model,
            embedding_dim=info.embedding_dim,
            max_sequence_length=info.max_sequence_length,
            device=info.device,
            dtype=info.dtype,
            backend=info.backend,
            pattern=info.pattern,
            fallback_reason=info.fallback_reason,
            skipped_backends=info.skipped,
        )
        return OrjsonResponse(ModelList(data=[card]).model_dump())

    @app.get("/healthz", response_model=Probe)
    async def healthz() -> Response:
        return OrjsonResponse({"status": "alive"})

    @app.get("/readyz", response_model=Probe, responses={503: {"model": Probe}})
    async def readyz() -> Response:
        if state.ready and not state.draining:
            return OrjsonResponse({"status": "ready"})
        status = "draining" if state.draining else "starting"
        return OrjsonResponse({"status": status}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


_Tensors = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, PatternConfig | None
]


def _attention_from_json(body: bytes, limit: int) -> _Tensors:
    try:
        request = AttentionRequest.model_validate_json(body)
    except ValidationError as exc:
        message, param = _validation_message(list(exc.errors()))
        raise ApiError(400, message, param=param) from exc
    q, k, v = (
        decode_payload(getattr(request, name), param=name, max_elements=limit)
        for name in ("q", "k", "v")
    )
    document_ids = (
        None
        if request.document_ids is None
        else decode_payload(request.document_ids, param="document_ids", max_elements=limit)
    )
    return q, k, v, document_ids, request.pattern


def _attention_from_safetensors(body: bytes, limit: int) -> _Tensors:
    tensors, metadata = decode_safetensors(body, max_elements=limit)
    unknown = sorted(set(tensors) - {"q", "k", "v", "document_ids"})
    if unknown:
        raise ApiError(400, f"unexpected tensors {unknown}; send q, k, v (and document_ids)")
    for name in ("q", "k", "v"):
        if name not in tensors:
            raise ApiError(400, f"the safetensors body has no tensor {name!r}", param=name)
    pattern = None
    if "pattern" in metadata:
        try:
            pattern = PatternConfig.model_validate_json(metadata["pattern"])
        except ValidationError as exc:
            message, param = _validation_message(list(exc.errors()))
            where = f"pattern.{param}" if param else "pattern"
            raise ApiError(400, f"pattern: {message}", param=where) from exc
    return tensors["q"], tensors["k"], tensors["v"], tensors.get("document_ids"), pattern


def _openapi(app: FastAPI, engine: EngineView) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document, with /v1/attention's two request forms (its route reads the raw
    body, so FastAPI cannot describe it) and the one model name this app serves."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            request_schema = AttentionRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in request_schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components["AttentionRequest"] = request_schema
            components["EmbeddingsRequest"]["properties"]["model"]["enum"] = [engine.info.model]
            schema["paths"]["/v1/attention"]["post"]["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/AttentionRequest"}
                    },
                    **{
                        media_type: {"schema": {"type": "string", "format": "binary"}}
                        for media_type in _SAFETENSORS_TYPES
                    },
                },
            }
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
