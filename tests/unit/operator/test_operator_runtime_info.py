"""Reading the backend from a runtime's GET /v1/models: answers, and every way it can fail."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sas_operator.runtime_info import BackendReport, read_backend


class _Models(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        if self.path != "/v1/models":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def runtime() -> Iterator[tuple[ThreadingHTTPServer, str]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _serve(server: ThreadingHTTPServer, payload: object) -> None:
    server.RequestHandlerClass.body = json.dumps(payload).encode()  # type: ignore[attr-defined]


def test_reads_backend_and_fallback_reason(runtime: tuple[ThreadingHTTPServer, str]) -> None:
    server, url = runtime
    card = {
        "id": "minilm",
        "backend": "dense",
        "fallback_reason": "no sm_90 GPU",
        "pattern": "window",
    }
    _serve(server, {"object": "list", "data": [card]})
    assert read_backend(url, timeout=2) == BackendReport("dense", "no sm_90 GPU")
    _serve(
        server, {"object": "list", "data": [{**card, "backend": "sparse", "fallback_reason": None}]}
    )
    assert read_backend(url, timeout=2) == BackendReport("sparse", None)


@pytest.mark.parametrize(
    "payload", [{}, {"data": []}, {"data": [{"id": "x"}]}, {"data": [{"backend": 3}]}, [1]]
)
def test_unexpected_answers_are_no_report(
    runtime: tuple[ThreadingHTTPServer, str], payload: object
) -> None:
    server, url = runtime
    _serve(server, payload)
    assert read_backend(url, timeout=2) is None


def test_unreachable_runtime_is_no_report() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    server.server_close()
    assert read_backend(url, timeout=0.5) is None
