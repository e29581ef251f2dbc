"""Start, wait for and stop a real control plane on loopback: etcd, API server, controllers, scheduler, kwok."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from hack.cluster import nodes, tools
from hack.cluster.kube import Kubectl, WaitTimeout, wait_for

ADMIN_USER = "admin"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
PR_SET_PDEATHSIG = 1
EC_KEY = ("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out")


class ClusterError(RuntimeError):
    """A step of bringing the cluster up failed; the message names the step and the log to read."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def log_tail(log: Path, lines: int) -> str:
    """The last `lines` lines of a process's log file ("" while it does not exist)."""
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(text[-lines:])


def die_with_parent() -> None:
    """Run in each child before exec: the kernel sends it SIGTERM if this Python process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Component:
    """One running control-plane process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log, lines)


@dataclass
class LocalCluster:
    """A control plane on loopback in `workdir`, with PKI, static tokens and fake kwok nodes.

    Use it as a context manager: entering starts every component and waits until the cluster
    schedules pods onto Ready nodes; leaving (also on an exception or Ctrl-C) stops them by pid.
    """

    workdir: Path
    etcd_port: int = field(default_factory=free_port)
    apiserver_port: int = field(default_factory=free_port)
    components: list[Component] = field(default_factory=list)
    admin_token: str = field(default_factory=lambda: os.urandom(24).hex())
    progress: Callable[[str], None] = lambda _message: None

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        """Every write by a service account (the operator runs as one), one JSON event a line."""
        return self.workdir / "logs" / "audit.log"

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Bring every component up in order and wait for each to be ready."""
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.progress("generating certificates and tokens")
        self._write_pki()
        self._write_auth()
        self.progress(f"starting etcd on 127.0.0.1:{self.etcd_port}")
        self._start_etcd()
        self.progress(f"starting kube-apiserver on {self.server}")
        self._start_apiserver()
        self.write_kubeconfig(self.admin_kubeconfig, ADMIN_USER, self.admin_token)
        self.progress("starting kube-controller-manager, kube-scheduler and kwok")
        self._start_controllers()
        self.progress("creating fake nodes: 2 H100, 1 H200, 1 CPU-only")
        self.admin.apply(*nodes.node_list()["items"])
        wait_for("kwok to mark every node Ready", self._nodes_ready, timeout=60)
        wait_for(
            "the default ServiceAccount (controller-manager up)",
            lambda: self.admin.in_namespace("default").get("serviceaccount", "default"),
            timeout=60,
        )

    def stop(self) -> None:
        """Stop every component by pid, newest first: SIGTERM, then SIGKILL after 10 s."""
        for component in reversed(self.components):
            process = component.process
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.components.clear()
        (self.workdir / "pids").unlink(missing_ok=True)

    @property
    def admin(self) -> Kubectl:
        """kubectl as the cluster admin (system:masters)."""
        return Kubectl(self.admin_kubeconfig)

    def write_kubeconfig(self, path: Path, user: str, token: str, namespace: str = "") -> None:
        """A kubeconfig for `user` with a bearer token, trusting the cluster's CA."""
        context: dict[str, str] = {"cluster": "local", "user": user}
        if namespace:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "local", "context": context}],
            "current-context": "local",
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)

    def metrics(self) -> str:
        """The API server's own Prometheus metrics (apiserver_request_total and friends)."""
        return self._get("/metrics")

    def _write_pki(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=self.pki, check=True, capture_output=True)

        openssl(*EC_KEY, "ca.key")
        openssl(
            "req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", "/CN=local-ca",
            "-out", "ca.crt",
        )  # fmt: skip
        openssl(*EC_KEY, "apiserver.key")
        openssl("req", "-new", "-key", "apiserver.key", "-subj", "/CN=kube-apiserver", "-out", "apiserver.csr")  # fmt: skip
        sans = "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc,IP:10.96.0.1"
        (self.pki / "san.ext").write_text(sans + "\n")
        openssl(
            "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "apiserver.crt",
        )  # fmt: skip
        openssl(*EC_KEY, "service-account.key")

    def _write_auth(self) -> None:
        (self.workdir / "tokens.csv").write_text(
            f'{self.admin_token},{ADMIN_USER},uid-admin,"system:masters"\n'
        )
        (self.workdir / "audit-policy.yaml").write_text(
            json.dumps(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived"],
                    "rules": [
                        {
                            "level": "Metadata",
                            "userGroups": ["system:serviceaccounts"],
                            "verbs": ["create", "update", "patch", "delete", "deletecollection"],
                        },
                        {"level": "None"},
                    ],
                }
            )
        )

    def _spawn(self, name: str, binary: Path, args: Sequence[str]) -> Component:
        log = self.workdir / "logs" / f"{name}.log"
        with log.open("ab") as output:
            process = subprocess.Popen(
                [str(binary), *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        component = Component(name, process, log)
        self.components.append(component)
        with (self.workdir / "pids").open("a") as pids:
            pids.write(f"{process.pid} {name}\n")
        return component

    def _wait_healthy(self, component: Component, probe: Callable[[], bool]) -> None:
        def healthy() -> bool:
            if component.process.poll() is not None:
                raise ClusterError(
                    f"{component.name} exited with {component.process.returncode}; "
                    f"{component.log}:\n{component.log_tail()}"
                )
            return probe()

        try:
            wait_for(f"{component.name} to be healthy", healthy, timeout=90)
        except WaitTimeout as error:
            if component.process.poll() is None:
                raise ClusterError(f"{error}; {component.log}:\n{component.log_tail()}") from None
            raise

    def _start_etcd(self) -> None:
        peer_port = free_port()
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn(
            "etcd",
            tools.ETCD.path,
            [
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait_healthy(etcd, lambda: http_ok(f"{client}/health"))

    def _start_apiserver(self) -> None:
        pki = self.pki
        apiserver = self._spawn(
            "kube-apiserver",
            tools.KUBE_APISERVER.path,
            [
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'service-account.key'}",
                f"--service-account-signing-key-file={pki / 'service-account.key'}",
                "--authorization-mode=Node,RBAC",
                f"--token-auth-file={self.workdir / 'tokens.csv'}",
                "--anonymous-auth=false",
                # OwnerReferencesPermissionEnforcement, as OpenShift runs it: children that
                # block their owner's deletion need update on its finalizers.
                "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
                "--endpoint-reconciler-type=none",
                f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--profiling=false",
            ],
        )
        self._wait_healthy(apiserver, lambda: self._get_ok("/readyz"))

    def _start_controllers(self) -> None:
        pki = self.pki
        controller_manager = self._spawn(
            "kube-controller-manager",
            tools.KUBE_CONTROLLER_MANAGER.path,
            [
                f"--kubeconfig={self.admin_kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'controller-manager'}",
                f"--service-account-private-key-file={pki / 'service-account.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                "--concurrent-gc-syncs=20",
                "--profiling=false",
            ],
        )
        scheduler = self._spawn(
            "kube-scheduler",
            tools.KUBE_SCHEDULER.path,
            [
                f"--kubeconfig={self.admin_kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'scheduler'}",
                "--profiling=false",
            ],
        )
        kwok = self._spawn(
            "kwok",
            tools.KWOK.path,
            [
                f"--kubeconfig={self.admin_kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={nodes.KWOK_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.0.0.1",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )
        for component in (controller_manager, scheduler, kwok):
            self._wait_healthy(component, lambda: True)

    def _nodes_ready(self) -> bool:
        listed = self.admin.list("nodes")
        ready = [
            node
            for node in listed
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (node.get("status") or {}).get("conditions") or []
            )
        ]
        return len(ready) == len(nodes.node_list()["items"])

    def _get(self, path: str) -> str:
        request = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    def _get_ok(self, path: str) -> bool:
        try:
            self._get(path)
        except (urllib.error.URLError, OSError):
            return False
        return True


def http_ok(url: str) -> bool:
    """Whether a plain-HTTP GET of `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def local_cluster(
    workdir: Path | None = None, progress: Callable[[str], None] = lambda _message: None
) -> Iterator[LocalCluster]:
    """Build the binaries if needed, start a cluster in `workdir` (a new temp dir if None), stop it after."""
    tools.build_all()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sas-cluster-")))
        with LocalCluster(workdir=workdir, progress=progress) as cluster:
            yield cluster
