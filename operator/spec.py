"""The SparseAttentionService resource: its spec and status models, defined once.

The spec embeds the runtime's own config classes (`sas_runtime.config`) for everything a pod
reads, and adds the Kubernetes-side fields (replicas, image, resources, scheduling,
autoscaling, monitoring, security, rollout). The CRD schema is generated from these classes
(`sas_operator.crd`); cross-field rules are written both as CEL (`x-kubernetes-validations`, run
by the API server) and as pydantic validators (run by the operator), and tests check that the
two agree.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from sas_runtime.config import (
    CEL_KEY,
    AttentionConfig,
    BatchingConfig,
    DeviceName,
    ModelConfig,
    ModelSource,
    RateLimitConfig,
    RuntimeConfig,
    ServerConfig,
    SpecModel,
    cel_list,
    cel_rules,
)

__all__ = [
    "GROUP",
    "KIND",
    "NAME_MAX_LENGTH",
    "NAME_PATTERN",
    "PLURAL",
    "SHORT_NAME",
    "SINGULAR",
    "VERSION",
    "AuthSecretRef",
    "AutoscalingSpec",
    "Condition",
    "GPUType",
    "LabelSelector",
    "ModelSpec",
    "MonitoringSpec",
    "PeerSelector",
    "ResourcesSpec",
    "RolloutSpec",
    "SchedulingSpec",
    "SecuritySpec",
    "ServiceMonitorSpec",
    "SparseAttentionServiceSpec",
    "SparseAttentionServiceStatus",
    "Toleration",
]

GROUP = "sparseattention.io"
VERSION = "v1alpha1"
KIND = "SparseAttentionService"
PLURAL = "sparseattentionservices"
SINGULAR = "sparseattentionservice"
SHORT_NAME = "sas"
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""A service's metadata.name is a DNS-1035 label (it names the Service and the Deployment)."""
NAME_MAX_LENGTH = 63
"""The longest metadata.name; the CRD's rule and the reconciler check both."""
CONFIG_DIR = "/etc/sas"
AUTH_DIR = "/var/run/sas/auth"
TMP_DIR = "/tmp"
SCRATCH_DIR = "/scratch"
SHM_DIR = "/dev/shm"
POD_MOUNT_PATHS = (CONFIG_DIR, TMP_DIR, SCRATCH_DIR, SHM_DIR, AUTH_DIR)
"""Where the operator mounts its own volumes in every pod: model.path keeps clear of them."""
OPERATOR_LABEL_KEYS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
"""The labels the operator puts on every child (selection and pruning go by them)."""

_QUALIFIED_NAME = (
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
LabelKey = Annotated[str, Field(min_length=1, max_length=317, pattern=f"^{_QUALIFIED_NAME}$")]
LabelValue = Annotated[
    str, Field(max_length=63, pattern=r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=32)]
DNSName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    ),
]
Quantity = Annotated[
    str,
    Field(
        min_length=1,
        max_length=32,
        pattern=r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$",
    ),
]


def _nested(path: str, mount: str) -> bool:
    """Whether `path` is `mount`, lies under it, or holds it (as the CEL rule says it)."""
    return f"{path}/".startswith(f"{mount}/") or f"{mount}/".startswith(
        path if path.endswith("/") else f"{path}/"
    )


_MODEL_PATH_CLEAR = (
    f"model.path must keep clear of the pod's own mounts ({', '.join(POD_MOUNT_PATHS)}):"
    " not one of them, under one or holding one"
)


def _inherited_cel(model: type[BaseModel]) -> list[tuple[str, str]]:
    """The (rule, message) pairs a config class already carries, for a subclass to extend."""
    extra = model.model_config.get("json_schema_extra")
    rules = extra.get(CEL_KEY, []) if isinstance(extra, dict) else []
    assert isinstance(rules, list)
    return [(str(r["rule"]), str(r["message"])) for r in rules if isinstance(r, dict)]


class ModelSpec(ModelConfig):
    """Which model the pods serve, and where its files come from."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            *_inherited_cel(ModelConfig),
            (
                "!has(self.pvc) || self.source == 'path'",
                "model.pvc needs source 'path': the claim is mounted read-only at model.path",
            ),
            (
                f"!has(self.path) || !{cel_list(POD_MOUNT_PATHS)}.exists(m,"
                " (self.path + '/').startsWith(m + '/')"
                " || (m + '/').startsWith(self.path.endsWith('/') ? self.path : self.path + '/'))",
                _MODEL_PATH_CLEAR,
            ),
        )
    )

    pvc: DNSName | None = None
    """Name of a PersistentVolumeClaim in the service's namespace holding the model directory;
    it is mounted read-only at model.path (source 'path' only), e.g. models-bge-small."""

    @model_validator(mode="after")
    def _pvc_needs_path(self) -> ModelSpec:
        if self.pvc is not None and self.source is not ModelSource.PATH:
            raise ValueError(
                "model.pvc needs source 'path': the claim is mounted read-only at model.path"
            )
        if self.path is not None and any(_nested(self.path, mount) for mount in POD_MOUNT_PATHS):
            raise ValueError(_MODEL_PATH_CLEAR)
        return self

    def runtime(self) -> ModelConfig:
        """The part of this section the runtime reads (everything but the claim)."""
        return ModelConfig.model_validate(self.model_dump(exclude={"pvc"}))


class GPUType(enum.StrEnum):
    """Hopper GPUs (sm_90) the sparse kernels are built for."""

    H100 = "H100"
    H200 = "H200"
    H800 = "H800"
    GH200 = "GH200"


class ResourcesSpec(SpecModel):
    """What each pod asks the scheduler for."""

    gpus: Annotated[int, Field(ge=0, le=8)] = 1
    """NVIDIA GPUs per pod (the nvidia.com/gpu resource); 0 runs on the CPU (tests, demos)."""

    gpu_type: GPUType = GPUType.H100
    """GPU model the pods must land on; it selects nodes by their nvidia.com/gpu.product label
    (the products of each type are an operator setting). Ignored when gpus is 0."""

    cpu: Quantity = "4"
    """CPU request per pod (Kubernetes quantity), e.g. 4 or 3500m."""

    memory: Quantity = "16Gi"
    """Memory request and limit per pod (Kubernetes quantity), e.g. 16Gi."""


_TOLERATION_RULES: tuple[tuple[str, str], ...] = (
    (
        "self.operator == 'Exists' || (has(self.key) && self.key != '')",
        "a toleration with operator Equal needs a key (only operator Exists may leave it out,"
        " to tolerate every taint)",
    ),
    (
        "self.operator != 'Exists' || !has(self.value) || self.value == ''",
        "a toleration with operator Exists matches any value: leave value out",
    ),
    (
        "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "tolerationSeconds needs effect NoExecute (other effects never evict)",
    ),
)


class Toleration(SpecModel):
    """One toleration added to the pods (core/v1 Toleration)."""

    model_config = ConfigDict(json_schema_extra=cel_rules(*_TOLERATION_RULES))

    key: Annotated[str, Field(max_length=317, pattern=f"^({_QUALIFIED_NAME})?$")] | None = None
    """Taint key the toleration matches, e.g. dedicated; empty (operator Exists only) matches
    every taint."""

    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists (any value) or Equal (the value below)."""

    value: LabelValue | None = None
    """Taint value to match with operator Equal; empty with operator Exists."""

    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches every effect."""

    toleration_seconds: Annotated[int, Field(ge=0, le=31_536_000)] | None = None
    """How long a NoExecute taint is tolerated before eviction (effect NoExecute only);
    empty: forever."""

    @model_validator(mode="after")
    def _realisable(self) -> Toleration:
        if self.operator == "Equal" and not self.key:
            raise ValueError(_TOLERATION_RULES[0][1])
        if self.operator == "Exists" and self.value:
            raise ValueError(_TOLERATION_RULES[1][1])
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(_TOLERATION_RULES[2][1])
        return self


class SchedulingSpec(SpecModel):
    """Where the pods may run, beyond the GPU type."""

    node_selector: Labels = Field(default_factory=dict)
    """Node labels the pods require, added to the GPU product affinity, e.g. {pool: inference}."""

    tolerations: Annotated[list[Toleration], Field(max_length=16)] = Field(default_factory=list)
    """Taints the pods tolerate; GPU pods always tolerate nvidia.com/gpu:NoSchedule."""

    priority_class_name: DNSName | None = None
    """PriorityClass of the pods, e.g. inference-critical."""

    runtime_class_name: DNSName | None = None
    """RuntimeClass of the pods, e.g. nvidia where the GPU runtime is not the default."""


class AutoscalingSpec(SpecModel):
    """A HorizontalPodAutoscaler on the queue depth; when set it owns the replica count."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.minReplicas <= self.maxReplicas",
                "autoscaling.minReplicas must not exceed maxReplicas",
            ),
        )
    )

    min_replicas: Annotated[int, Field(ge=1, le=1024)] = 1
    """Fewest pods the autoscaler keeps."""

    max_replicas: Annotated[int, Field(ge=1, le=1024)] = 8
    """Most pods the autoscaler may run (each takes resources.gpus GPUs)."""

    target_queue_depth: Annotated[int, Field(ge=1, le=1_000_000)] = 32
    """Average requests waiting per pod that the autoscaler aims for (the runtime's
    sas_queue_depth metric, served to the HPA by a custom-metrics adapter)."""

    @model_validator(mode="after")
    def _min_within_max(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed maxReplicas")
        return self


_OWN_LABELS = (
    "monitoring.serviceMonitor.labels must leave out the labels the operator sets on every"
    f" child ({', '.join(OPERATOR_LABEL_KEYS)})"
)

IntervalString = Annotated[str, Field(pattern=r"^[0-9]+(ms|s|m|h)$", max_length=16)]


class ServiceMonitorSpec(SpecModel):
    """The Prometheus Operator ServiceMonitor for the pods' /metrics."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                f"!has(self.labels) || !self.labels.exists(k, k in {cel_list(OPERATOR_LABEL_KEYS)})",
                _OWN_LABELS,
            ),
        )
    )

    enabled: bool = True
    """Create a ServiceMonitor when the cluster serves monitoring.coreos.com/v1 (otherwise the
    Ready condition's message says monitoring is off and why)."""

    interval: IntervalString = "15s"
    """Scrape interval, e.g. 15s or 1m."""

    labels: Labels = Field(default_factory=dict)
    """Extra labels on the ServiceMonitor, e.g. {release: prometheus} for a Prometheus whose
    serviceMonitorSelector wants them (not the app.kubernetes.io/ labels the operator sets)."""

    @model_validator(mode="after")
    def _no_operator_labels(self) -> ServiceMonitorSpec:
        if any(key in OPERATOR_LABEL_KEYS for key in self.labels):
            raise ValueError(_OWN_LABELS)
        return self


class MonitoringSpec(SpecModel):
    """How the pods are scraped."""

    service_monitor: ServiceMonitorSpec = ServiceMonitorSpec()
    """The ServiceMonitor."""


class LabelSelector(SpecModel):
    """Labels a peer must carry (a matchLabels selector)."""

    match_labels: Labels = Field(default_factory=dict)
    """Every one of these labels must match; empty matches everything."""


class PeerSelector(SpecModel):
    """Pods allowed to call the service: a namespace selector, a pod selector, or both
    (both: those pods in those namespaces; pod selector alone: in the service's namespace)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "has(self.namespaceSelector) || has(self.podSelector)",
                "each security.allowFrom entry needs a namespaceSelector or a podSelector",
            ),
        )
    )

    namespace_selector: LabelSelector | None = None
    """Namespaces whose pods may call, by namespace labels, e.g.
    {matchLabels: {kubernetes.io/metadata.name: search}}."""

    pod_selector: LabelSelector | None = None
    """Pods that may call, by pod labels, e.g. {matchLabels: {app: search-api}}."""

    @model_validator(mode="after")
    def _selects_something(self) -> PeerSelector:
        if self.namespace_selector is None and self.pod_selector is None:
            raise ValueError(
                "each security.allowFrom entry needs a namespaceSelector or a podSelector"
            )
        return self


class AuthSecretRef(SpecModel):
    """A Secret key holding the bearer token that requests must present."""

    name: DNSName
    """Secret name in the service's namespace, e.g. sas-token."""

    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")] = "token"
    """Key within the Secret whose value is the token."""


class SecuritySpec(SpecModel):
    """Who may reach the pods, and what they must present."""

    allow_from: Annotated[list[PeerSelector], Field(max_length=32)] | None = None
    """Unset: any pod may call (no NetworkPolicy). Set: a NetworkPolicy admits only these peers
    (and the operator, which reads /v1/models) to the serving port; an empty list admits only
    the operator. Include your Prometheus' namespace for scraping."""

    auth_secret_ref: AuthSecretRef | None = None
    """Require a bearer token, read from this Secret (mounted into the pods, never copied)."""


class RolloutSpec(SpecModel):
    """How a new pod template replaces the old pods."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.maxSurge + self.maxUnavailable >= 1",
                "rollout.maxSurge and maxUnavailable cannot both be 0",
            ),
        )
    )

    max_surge: Annotated[int, Field(ge=0, le=1024)] = 1
    """Extra pods (and so extra GPUs) allowed during a rollout; 1 replaces one pod at a time."""

    max_unavailable: Annotated[int, Field(ge=0, le=1024)] = 0
    """Pods that may be missing during a rollout; 0 keeps full capacity, raise it (with
    maxSurge 0) when the cluster has no spare GPUs."""

    @model_validator(mode="after")
    def _moves(self) -> RolloutSpec:
        if self.max_surge + self.max_unavailable < 1:
            raise ValueError("rollout.maxSurge and maxUnavailable cannot both be 0")
        return self


_SPEC_RULES: tuple[tuple[str, str], ...] = (
    (
        "!has(self.model.maxSequenceLength) || !has(self.attention.pattern.window)"
        " || self.attention.pattern.window <= self.model.maxSequenceLength",
        "attention.pattern.window must not exceed model.maxSequenceLength",
    ),
    (
        "!has(self.model.maxSequenceLength) || !has(self.attention.pattern.globalTokens)"
        " || self.attention.pattern.globalTokens <= self.model.maxSequenceLength",
        "attention.pattern.globalTokens must not exceed model.maxSequenceLength",
    ),
    (
        "self.attention.cudaGraphs.batchSizes.all(b, b <= self.batching.maxBatchSize)",
        "attention.cudaGraphs.batchSizes must not exceed batching.maxBatchSize",
    ),
    (
        "self.resources.gpus > 0 || self.server.device != 'cuda'",
        "server.device 'cuda' needs resources.gpus of at least 1",
    ),
    (
        "!has(self.server.authTokenFile)",
        "server.authTokenFile is set by the operator: use security.authSecretRef",
    ),
    (
        "!has(self.autoscaling) || self.autoscaling.maxReplicas * self.resources.gpus <= 4096",
        "autoscaling.maxReplicas times resources.gpus must not exceed 4096 GPUs",
    ),
)


class SparseAttentionServiceSpec(SpecModel):
    """A sparse-attention inference service: hardened GPU pods serving embeddings and
    attention over in-cluster HTTP, scraped by Prometheus."""

    model_config = ConfigDict(json_schema_extra=cel_rules(*_SPEC_RULES))

    replicas: Annotated[int, Field(ge=0, le=1024)] = 1
    """Pods to run (the scale subresource: kubectl scale sas NAME --replicas N); ignored while
    autoscaling is set."""

    image: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^\S+$")] | None = None
    """Runtime container image; default: the operator's SAS_OPERATOR_DEFAULT_RUNTIME_IMAGE setting."""

    model: ModelSpec = ModelSpec()
    """The model to serve."""

    attention: AttentionConfig = AttentionConfig()
    """Attention backend, pattern, dtype, CUDA graphs and the sparse-versus-dense guard."""

    batching: BatchingConfig = BatchingConfig()
    """The continuous batcher."""

    rate_limit: RateLimitConfig = RateLimitConfig()
    """Per-pod token bucket."""

    server: ServerConfig = ServerConfig()
    """HTTP server limits and drain time."""

    resources: ResourcesSpec = ResourcesSpec()
    """GPUs, CPU and memory per pod."""

    scheduling: SchedulingSpec = SchedulingSpec()
    """Node selection, tolerations and priority."""

    autoscaling: AutoscalingSpec | None = None
    """Unset: replicas is the pod count. Set: a HorizontalPodAutoscaler owns it."""

    monitoring: MonitoringSpec = MonitoringSpec()
    """Prometheus scraping."""

    security: SecuritySpec = SecuritySpec()
    """Network access and authentication."""

    rollout: RolloutSpec = RolloutSpec()
    """Rolling update pace."""

    @model_validator(mode="after")
    def _cross_section_rules(self) -> SparseAttentionServiceSpec:
        limit = self.model.max_sequence_length
        pattern = self.attention.pattern
        if limit is not None and pattern.window is not None and pattern.window > limit:
            raise ValueError("attention.pattern.window must not exceed model.maxSequenceLength")
        if (
            limit is not None
            and pattern.global_tokens is not None
            and pattern.global_tokens > limit
        ):
            raise ValueError(
                "attention.pattern.globalTokens must not exceed model.maxSequenceLength"
            )
        if any(b > self.batching.max_batch_size for b in self.attention.cuda_graphs.batch_sizes):
            raise ValueError(
                "attention.cudaGraphs.batchSizes must not exceed batching.maxBatchSize"
            )
        if self.resources.gpus == 0 and self.server.device is DeviceName.CUDA:
            raise ValueError("server.device 'cuda' needs resources.gpus of at least 1")
        if self.server.auth_token_file is not None:
            raise ValueError(
                "server.authTokenFile is set by the operator: use security.authSecretRef"
            )
        if (
            self.autoscaling is not None
            and self.autoscaling.max_replicas * self.resources.gpus > 4096
        ):
            raise ValueError(
                "autoscaling.maxReplicas times resources.gpus must not exceed 4096 GPUs"
            )
        return self

    def runtime_config(self, *, auth_token_file: str | None) -> RuntimeConfig:
        """The runtime's projection of this spec, validated by the runtime's own model."""
        server = self.server.model_dump(by_alias=True)
        server["authTokenFile"] = auth_token_file
        return RuntimeConfig.model_validate(
            {
                "model": self.model.runtime().model_dump(by_alias=True),
                "attention": self.attention.model_dump(by_alias=True),
                "batching": self.batching.model_dump(by_alias=True),
                "rateLimit": self.rate_limit.model_dump(by_alias=True),
                "server": server,
            }
        )


class StatusModel(BaseModel):
    """Base of the status models: camelCase on the wire, documented fields."""

    model_config = ConfigDict(
        populate_by_name=True, alias_generator=to_camel, use_attribute_docstrings=True
    )


class Condition(StatusModel):
    """One condition, in the metav1.Condition shape."""

    type: Annotated[str, Field(max_length=316)]
    """Ready, Progressing or Degraded."""

    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""

    reason: Annotated[str, Field(max_length=1024)]
    """One CamelCase word saying why, e.g. MissingAuthSecret."""

    message: Annotated[str, Field(max_length=32768)] = ""
    """What happened and what to do about it."""

    last_transition_time: str
    """When status last changed (RFC 3339)."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The spec generation this condition describes."""


class SparseAttentionServiceStatus(StatusModel):
    """What the operator observed, written after every reconcile."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The spec generation the operator last acted on."""

    replicas: Annotated[int, Field(ge=0)] | None = None
    """Pods that exist (the scale subresource's status.replicas)."""

    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """Pods passing their readiness probe."""

    selector: str | None = None
    """Label selector of the pods, for the scale subresource and kubectl."""

    url: str | None = None
    """In-cluster URL of the service, e.g. http://minilm.default.svc:80."""

    backend: str | None = None
    """Attention backend the pods report serving with (from /v1/models), e.g. sparse or dense."""

    fallback_reason: str | None = None
    """Why the pods serve dense instead of sparse, when they do."""

    conditions: Annotated[
        list[Condition],
        Field(
            max_length=8,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        ),
    ] = []
    """Ready (serving), Progressing (a rollout under way) and Degraded (cannot be realised)."""

    def to_patch(self) -> dict[str, Any]:
        """This status as a JSON merge patch body: every field, unset ones as null."""
        return self.model_dump(mode="json", by_alias=True)
