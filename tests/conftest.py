"""Fixtures shared by the runtime's tests: the fake engine, and real runtime processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fake_engine import FakeEngine
from tests.runtime_process import (
    RuntimeProcess,
    RuntimeStartError,
    StartRuntime,
    start_runtime_process,
)


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="module")
def start_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartRuntime]:
    """`start(config, engine=...)` runs a runtime process (config as a dict, engine factory as
    module:function) until the test module is done."""
    started: list[RuntimeProcess] = []

    def start(config: dict[str, Any], *, engine: str) -> RuntimeProcess:
        workdir = tmp_path_factory.mktemp("runtime")
        try:
            runtime = start_runtime_process(config, engine=engine, workdir=workdir)
        except RuntimeStartError as exc:
            pytest.fail(str(exc))
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        runtime.stop()
