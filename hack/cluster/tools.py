"""Build and cache the local cluster's binaries from the Go module proxy (etcd, Kubernetes, kwok, helm)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """The project's cache folder: `$CACHE_DIR` as the Makefile sets it, else the Makefile's default."""
    default = Path.home() / ".cache" / "sparse-attention-operator"
    return Path(os.environ.get("CACHE_DIR", default)).expanduser().resolve()


def go_env() -> dict[str, str]:
    """The environment for every `go` command: module and build caches inside the project's cache."""
    go = cache_dir() / "go"
    return {
        **os.environ,
        "GOMODCACHE": str(go / "mod"),
        "GOCACHE": str(go / "build"),
        "GOFLAGS": "-mod=readonly -buildvcs=false -trimpath",
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
    }


def required_version(module_dir: Path, module_path: str) -> str:
    """The version of `module_path` that the go.mod in `module_dir` requires."""
    go_mod = (module_dir / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module_path)} (v\S+)", go_mod, re.MULTILINE)
    if match is None:
        raise ValueError(f"{module_dir / 'go.mod'} does not require {module_path}")
    return match.group(1)


@dataclass(frozen=True)
class Tool:
    """One binary built from one of our Go modules under hack/cluster/."""

    name: str
    """File name of the binary, e.g. `kube-apiserver`."""
    module_dir: Path
    """Our Go module that builds it (its go.mod and go.sum pin every dependency)."""
    package: str
    """Go package path of the command, `.` for our own main package."""
    upstream: str
    """The upstream module whose version names the binary."""
    version_symbols: tuple[str, ...] = ()
    """Linker `-X` symbols set to the upstream version (`-X` values use `{version}`, `{major}`, `{minor}`)."""

    @property
    def version(self) -> str:
        return required_version(self.module_dir, self.upstream)

    @property
    def path(self) -> Path:
        """Where the built binary lives: keyed by version and by the module's pinned sources."""
        digest = hashlib.sha256()
        for name in ("go.mod", "go.sum", "main.go"):
            source = self.module_dir / name
            if source.exists():
                digest.update(source.read_bytes())
        return (
            cache_dir()
            / "cluster"
            / "bin"
            / f"{self.name}-{self.version}-{digest.hexdigest()[:10]}"
        )

    def ldflags(self) -> str:
        major, minor = self.version.lstrip("v").split(".")[:2]
        values = {"version": self.version, "major": major, "minor": minor}
        return " ".join(["-s", "-w", *(f"-X {s.format(**values)}" for s in self.version_symbols)])

    def build(self) -> None:
        """Build the binary unless a build of this exact version and pin set is already cached."""
        if self.path.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        command = ["go", "build", "-ldflags", self.ldflags(), "-o", str(partial), self.package]
        print(f"building {self.name} {self.version}", file=sys.stderr, flush=True)
        subprocess.run(command, cwd=self.module_dir, env=go_env(), check=True)
        partial.rename(self.path)


KUBERNETES_VERSION_SYMBOLS = (
    "k8s.io/component-base/version.gitVersion={version}",
    "k8s.io/component-base/version.gitMajor={major}",
    "k8s.io/component-base/version.gitMinor={minor}",
    "k8s.io/client-go/pkg/version.gitVersion={version}",
    "k8s.io/client-go/pkg/version.gitMajor={major}",
    "k8s.io/client-go/pkg/version.gitMinor={minor}",
)


def _kubernetes(name: str) -> Tool:
    return Tool(
        name=name,
        module_dir=HERE / "kubernetes",
        package=f"k8s.io/kubernetes/cmd/{name}",
        upstream="k8s.io/kubernetes",
        version_symbols=KUBERNETES_VERSION_SYMBOLS,
    )


ETCD = Tool("etcd", HERE / "etcd", ".", "go.etcd.io/etcd/server/v3")
KUBE_APISERVER = _kubernetes("kube-apiserver")
KUBE_CONTROLLER_MANAGER = _kubernetes("kube-controller-manager")
KUBE_SCHEDULER = _kubernetes("kube-scheduler")
KWOK = Tool(
    "kwok",
    HERE / "kwok",
    "sigs.k8s.io/kwok/cmd/kwok",
    "sigs.k8s.io/kwok",
    ("sigs.k8s.io/kwok/pkg/consts.Version={version}",),
)
HELM = Tool(
    "helm",
    HERE / "helm",
    "helm.sh/helm/v3/cmd/helm",
    "helm.sh/helm/v3",
    ("helm.sh/helm/v3/internal/version.version={version}",),
)
ALL_TOOLS = (ETCD, KUBE_APISERVER, KUBE_CONTROLLER_MANAGER, KUBE_SCHEDULER, KWOK, HELM)


def kubectl() -> Path:
    """kubectl from the machine (not built: every developer machine and CI has one)."""
    found = shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError("kubectl is not on PATH (Debian package `kubectl`)")
    return Path(found)


def build_all() -> float:
    """Build every missing binary; return the seconds it took (0 when all were cached)."""
    started = time.monotonic()
    missing = [tool for tool in ALL_TOOLS if not tool.path.exists()]
    for tool in missing:
        tool.build()
    return time.monotonic() - started if missing else 0.0


def download_module(module: str, version: str) -> Path:
    """Fetch one module into the project's module cache (checksum-verified) and return its folder."""
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        env=go_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r'"Dir": "([^"]+)"', result.stdout)
    if match is None:
        raise RuntimeError(f"go mod download {module}@{version} gave no folder: {result.stdout}")
    return Path(match.group(1))
