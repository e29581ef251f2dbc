"""The fake nodes kwok runs: GPU nodes of two Hopper products and one CPU-only node."""

from __future__ import annotations

from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
"""The label NVIDIA GPU feature discovery sets, which the operator's gpuType selects on."""
H100_PRODUCT = "NVIDIA-H100-80GB-HBM3"
H200_PRODUCT = "NVIDIA-H200"
GPUS_PER_NODE = 8

GPU_NODES = {"gpu-h100-0": H100_PRODUCT, "gpu-h100-1": H100_PRODUCT, "gpu-h200-0": H200_PRODUCT}
POOL_LABELS = {"pool": "inference"}
"""A node-pool label on every GPU node, as examples/ select dedicated pools by one."""
CPU_NODES = ("cpu-0",)


def _node(name: str, labels: dict[str, str], resources: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
        },
        "spec": {},
        "status": {"capacity": resources, "allocatable": resources},
    }


def gpu_node(name: str, product: str) -> dict[str, Any]:
    """A node with 8 GPUs of `product`, tainted as GPU clusters usually taint them."""
    node = _node(
        name,
        {GPU_PRODUCT_LABEL: product, "nvidia.com/gpu.count": str(GPUS_PER_NODE), **POOL_LABELS},
        {"cpu": "96", "memory": "1Ti", "pods": "250", "nvidia.com/gpu": str(GPUS_PER_NODE)},
    )
    node["spec"]["taints"] = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    return node


def cpu_node(name: str) -> dict[str, Any]:
    """A node without GPUs: GPU pods must never land here."""
    return _node(name, {}, {"cpu": "32", "memory": "128Gi", "pods": "250"})


def node_list() -> dict[str, Any]:
    """Every fake node as one v1 List, ready for `kubectl apply -f -`."""
    items = [gpu_node(name, product) for name, product in GPU_NODES.items()]
    items += [cpu_node(name) for name in CPU_NODES]
    return {"apiVersion": "v1", "kind": "List", "items": items}
