"""Schemathesis against the runtime's own OpenAPI schema, over HTTP to a real process: no
generated request (valid or, in negative mode, invalid) gets a 5xx, and answers match the documented codes, media
types and bodies.

Each operation's cases come from `APIOperation.as_strategy()` driven by hypothesis inside the
test (schemathesis' lazy `from_fixture` loader does not run under pytest 9). Valid
X-Request-Timeout-Ms values are dropped: a deadline the client picks (1 ms) may expire, and its
504 is the documented answer, tested on its own."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.runtime_process import RuntimeProcess, StartRuntime, engine_under_test

CONFIG: dict[str, Any] = {
    "attention": {"backend": "dense"},
    "rateLimit": {"requestsPerSecond": 100000, "burst": 100000},
    "server": {"device": "cpu", "maxAttentionElements": 65536, "maxInputs": 16},
}
EXAMPLES_PER_OPERATION = 25
OPERATIONS_WITH_INPUT = [("/v1/embeddings", "POST"), ("/v1/attention", "POST")]
OPERATIONS = [
    *OPERATIONS_WITH_INPUT,
    *((path, "GET") for path in ("/v1/models", "/healthz", "/readyz", "/metrics")),
]
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def runtime(start_runtime: StartRuntime) -> RuntimeProcess:
    return start_runtime(CONFIG, engine=engine_under_test())


@pytest.mark.parametrize(
    ("path", "method", "mode"),
    [
        *((*operation, GenerationMode.POSITIVE) for operation in OPERATIONS),
        *((*operation, GenerationMode.NEGATIVE) for operation in OPERATIONS_WITH_INPUT),
    ],
)
def test_no_generated_request_gets_a_5xx(
    runtime: RuntimeProcess, path: str, method: str, mode: GenerationMode
) -> None:
    operation = schemathesis.openapi.from_url(f"{runtime.url}/openapi.json")[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: Case[Any]) -> None:
        if case.headers and str(case.headers.get(TIMEOUT_HEADER, "")).isdigit():
            # A valid deadline the client chose may expire: 504 by contract (test_app covers it).
            del case.headers[TIMEOUT_HEADER]
        case.call_and_validate(checks=CHECKS)

    call()
    assert runtime.process.poll() is None
