"""A small kubectl-backed client (JSON in, JSON out) for the cluster scripts, e2e tests, demo and bench."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from hack.cluster import tools

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A condition did not hold in time; the message says which and what was last seen."""


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Poll `probe` until it returns something other than None or False; return that.

    Raise WaitTimeout naming `what` after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class CommandFailed(subprocess.CalledProcessError):
    """kubectl or helm failed; str() holds its stderr, which carries the API server's message."""

    def __str__(self) -> str:
        return f"{' '.join(self.cmd)} failed: {(self.stderr or '').strip()}"


KubectlError = CommandFailed


@dataclass(frozen=True)
class Kubectl:
    """kubectl with a fixed kubeconfig and (optionally) namespace."""

    kubeconfig: Path
    namespace: str | None = None

    def in_namespace(self, namespace: str) -> Kubectl:
        return replace(self, namespace=namespace)

    def run(self, *args: str, stdin: str | None = None) -> str:
        command = [str(tools.kubectl()), f"--kubeconfig={self.kubeconfig}"]
        if self.namespace is not None:
            command.append(f"--namespace={self.namespace}")
        result = subprocess.run(
            [*command, *args], input=stdin, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise KubectlError(result.returncode, ["kubectl", *args], result.stdout, result.stderr)
        return result.stdout

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        output = self.run("get", kind, name, "--ignore-not-found", "-o", "json")
        if not output.strip():
            return None
        found: dict[str, Any] = json.loads(output)
        return found

    def list(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"]
        if selector:
            args += ["-l", selector]
        items: list[dict[str, Any]] = json.loads(self.run(*args))["items"]
        return items

    def apply(self, *objects: dict[str, Any], server_side: bool = False) -> str:
        """`kubectl apply -f -` of the objects, as a user would."""
        document = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        args = ["apply", "-f", "-"] + (["--server-side"] if server_side else [])
        return self.run(*args, stdin=json.dumps(document))

    def apply_file(self, path: Path) -> str:
        return self.run("apply", "-f", str(path))

    def patch(
        self, kind: str, name: str, patch: dict[str, Any], kind_of_patch: str = "merge"
    ) -> str:
        return self.run("patch", kind, name, f"--type={kind_of_patch}", "-p", json.dumps(patch))

    def delete(self, kind: str, name: str, wait: bool = True) -> str:
        return self.run("delete", kind, name, "--ignore-not-found", f"--wait={str(wait).lower()}")
