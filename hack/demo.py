"""`make demo`: the operator end to end on a local cluster, then the runtime it configured, locally.

Steps: build the cluster's binaries (cached), start the cluster, `helm install` the chart, run
the operator as a local process with the chart ServiceAccount's token, `kubectl apply` the
MiniLM example, wait for Ready, then start the runtime on this machine with exactly the config
the operator wrote into the ConfigMap and the command of the rendered Deployment (kwok's pods
run no containers), send it an embeddings and an attention request, and print the results.
Ctrl-C or the end tears everything down.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import torch

from hack.cluster import chart, tools
from hack.cluster.cluster import LocalCluster, die_with_parent, free_port, http_ok
from hack.cluster.kube import Kubectl, wait_for
from hack.cluster.operator_process import OperatorProcess
from sas_operator.render import CONFIG_DIR, CONFIG_FILE, mounted_config_map
from sas_runtime.tensor_codec import encode_payload
from tests.e2e.services import current_and_ready

EXAMPLE = chart.REPO_ROOT / "examples" / "sas-minilm.yaml"
STEPS = 10


class DemoFailed(RuntimeError):
    """A step failed; the message names the step and why."""


class Progress:
    """Numbered steps on stderr, each timed; a failure names its step."""

    def __init__(self) -> None:
        self.number = 0

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.number += 1
        print(f"[{self.number}/{STEPS}] {what} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            yield
        except (KeyboardInterrupt, DemoFailed):
            raise
        except Exception as error:
            detail = getattr(error, "stderr", None) or error
            raise DemoFailed(f"step {self.number} ({what}) failed: {detail}") from error
        print(f"      done in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)


def _service_name(kube: Kubectl) -> str:
    output = kube.apply_file(EXAMPLE)
    return output.split()[0].split("/")[-1]


def _runtime_command(deployment: dict[str, Any], config_file: Path, port: int) -> list[str]:
    """The Deployment's container command, pointed at the local copy of its config.

    Only the interpreter (this venv's), the config path and the listen address change.
    """
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command = [*container.get("command", []), *container.get("args", [])]
    in_pod = f"{CONFIG_DIR}/{CONFIG_FILE}"
    if command[:1] != ["python"] or in_pod not in command:
        raise DemoFailed(f"unexpected runtime command in the Deployment: {command}")
    local = [sys.executable, *command[1:]]
    local[local.index(in_pod)] = str(config_file)
    return [*local, "--host", "127.0.0.1", "--port", str(port)]


def _attention_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 256, 64, generator=generator) for _ in range(3))
    return q, k, v


def _attention_request(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, Any]:
    return {
        "q": encode_payload(q).model_dump(),
        "k": encode_payload(k).model_dump(),
        "v": encode_payload(v).model_dump(),
        "pattern": {"type": "causal"},
    }


def _max_error_vs_sdpa(
    answer: dict[str, Any], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> float:
    """Largest difference between the runtime's output and torch's own causal SDPA."""
    output = answer["output"]
    if output["dtype"] != "float32":
        raise DemoFailed(f"expected a float32 output for float32 inputs, got {output['dtype']}")
    raw = bytearray(base64.b64decode(output["data"]))
    served = torch.frombuffer(raw, dtype=torch.float32).reshape(output["shape"])
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return float((served - expected).abs().max())


def _metric_lines(text: str, prefixes: tuple[str, ...], limit: int = 8) -> list[str]:
    lines = [
        line
        for line in text.splitlines()
        if line.startswith(prefixes) and not any(part in line for part in ("_bucket", "_created"))
    ]
    return lines[:limit]


def run_demo(workdir: Path) -> None:
    progress = Progress()
    with contextlib.ExitStack() as teardown:
        with progress.step(
            "build etcd, Kubernetes 1.32, kwok and helm (cached after the first run)"
        ):
            tools.build_all()
        with progress.step(
            "start the cluster (etcd, API server, controllers, scheduler, kwok nodes)"
        ):
            cluster = teardown.enter_context(LocalCluster(workdir / "cluster"))
        with progress.step(f"helm install {chart.RELEASE} into {chart.NAMESPACE}"):
            chart.install_chart(cluster)
        with progress.step("start the operator locally as the chart's ServiceAccount"):
            kubeconfig = workdir / "operator.kubeconfig"
            user = chart.write_operator_kubeconfig(cluster, kubeconfig)
            operator = OperatorProcess(
                kubeconfig, chart.operator_environment(cluster), workdir / "operator.log"
            )
            operator.start()
            teardown.callback(operator.stop)
            print(f"      operator runs as {user}", file=sys.stderr)
        kube = cluster.admin.in_namespace("default")
        with progress.step(f"kubectl apply -f {EXAMPLE.relative_to(chart.REPO_ROOT)}"):
            name = _service_name(kube)
        with progress.step(f"wait for {name} to be Ready"):
            wait_for(f"{name} Ready", lambda: current_and_ready(kube, name), 120)
        with progress.step(
            "start the runtime with the ConfigMap's config and the Deployment's command"
        ):
            deployment = kube.get("deployments", name)
            if deployment is None:
                raise DemoFailed(f"the operator made no Deployment named {name}")
            config_map_name = mounted_config_map(deployment)
            config_map = kube.get("configmaps", config_map_name)
            if config_map is None:
                raise DemoFailed(
                    f"the Deployment mounts ConfigMap {config_map_name}, which is gone"
                )
            config_file = workdir / CONFIG_FILE
            config_file.write_text(config_map["data"][CONFIG_FILE])
            port = free_port()
            command = _runtime_command(deployment, config_file, port)
            print(f"      {' '.join(command)}", file=sys.stderr)
            log = (workdir / "runtime.log").open("wb")
            teardown.callback(log.close)
            runtime = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
            teardown.callback(_stop, runtime)
            base = f"http://127.0.0.1:{port}"
            wait_for("the runtime's /readyz", lambda: _answers(f"{base}/readyz", runtime), 300)
        client = teardown.enter_context(httpx.Client(base_url=base, timeout=60))
        with progress.step("POST /v1/embeddings"):
            model = client.get("/v1/models").raise_for_status().json()["data"][0]["id"]
            texts = ["block-sparse attention on Kubernetes", "a dense path when sparse is unsure"]
            embedded = client.post("/v1/embeddings", json={"model": model, "input": texts})
            vectors = [row["embedding"] for row in embedded.raise_for_status().json()["data"]]
        with progress.step("POST /v1/attention (causal, q/k/v 1x4x256x64)"):
            q, k, v = _attention_inputs()
            attended = client.post("/v1/attention", json=_attention_request(q, k, v))
            answer = attended.raise_for_status().json()
            error = _max_error_vs_sdpa(answer, q, k, v)
        with progress.step("report"):
            print(cluster.admin.run("get", "sas", "-A", "-o", "wide"))
            cosine = torch.nn.functional.cosine_similarity(
                torch.tensor(vectors[0]), torch.tensor(vectors[1]), dim=0
            )
            print(
                f"embeddings: {len(vectors)} x {len(vectors[0])} from {model}; cosine {cosine:.3f}"
            )
            print(
                "attention: output "
                f"{answer['output']['shape']} {answer['output']['dtype']}, "
                f"backend {answer.get('backend')}, pattern {answer.get('pattern')}, "
                f"max |output - torch SDPA| = {error:.2e}"
            )
            print("runtime metrics:")
            for line in _metric_lines(client.get("/metrics").text, ("sas_",)):
                print(f"  {line}")
            operator_metrics = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics").text
            print("operator metrics:")
            for line in _metric_lines(operator_metrics, ("sas_operator_",)):
                print(f"  {line}")
        print("tearing down", file=sys.stderr)


def _answers(url: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise DemoFailed(f"the runtime exited with {process.returncode} before it was ready")
    return http_ok(url)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sas-demo-") as folder:
        try:
            run_demo(Path(folder))
        except DemoFailed as failure:
            print(f"demo failed: {failure}", file=sys.stderr)
            for log in sorted(Path(folder).glob("*.log")):
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- last lines of {log.name}:", *tail, sep="\n", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted: everything stopped", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
