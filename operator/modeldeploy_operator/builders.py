"""Pure functions from a ModelDeployment to the plain manifests of the objects it owns.

Nothing here talks to Kubernetes: the reconcile applies these dicts with
server-side apply, so every field written here is owned by the operator and
every field left out (an HPA's replica count) stays with whoever owns it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .settings import OperatorSettings
from .spec import (
    RESERVED_ENV_PREFIX,
    Autoscaling,
    ModelDeploymentSpec,
    ModelSource,
    PodDisruptionBudget,
    parse_duration,
)

__all__ = [
    "HTTP_PORT",
    "LABEL_INSTANCE",
    "LABEL_MANAGED_BY",
    "LABEL_NAME",
    "LABEL_VARIANT",
    "MANAGER_NAME",
    "MODEL_DIR",
    "MODEL_REVISION_ANNOTATION",
    "SERVER_APP_NAME",
    "SERVICE_PORT",
    "Manifest",
    "Owner",
    "Variant",
    "build_children",
    "build_deployment",
    "build_horizontal_pod_autoscaler",
    "build_pod_disruption_budget",
    "build_service",
    "deployment_name",
    "label_selector",
    "model_revision",
    "owned_metadata",
    "selector_labels",
    "service_name",
]

Manifest = dict[str, Any]
Variant = Literal["stable", "canary"]

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_VARIANT = "modeldeploy.io/variant"
SERVER_APP_NAME = "modeldeploy-server"
MANAGER_NAME = "modeldeploy"
# Changes whenever the served model changes, so `kubectl describe` shows which model a pod runs
# and a new model rolls the pods even where nothing else in the template changed.
MODEL_REVISION_ANNOTATION = "modeldeploy.io/model-revision"

HTTP_PORT = 8080
SERVICE_PORT = 80
MODEL_DIR = "/mnt/models"
# Where a pvc:// claim is mounted for the fetch step, which copies from it like from any other source.
MODEL_SOURCE_DIR = "/mnt/model-source"
# The server image's unprivileged user; a numeric id lets the kubelet enforce runAsNonRoot.
SERVER_USER_ID = 65532
# How long a terminating server pod keeps serving before it is sent SIGTERM: kube-proxy and
# Gateways keep routing new connections to it until they have seen its EndpointSlice change
# (Traefik sent requests to a stopped pod for 1.3-2.0 s on the real node).
PRE_STOP_SLEEP_SECONDS = 5
# After SIGTERM, the server's drain delay: it keeps serving, and every response says
# `Connection: close`. Keep-alive connections opened before the endpoint went are still routed
# here; without this window the server closed them while idle, and a client sending its next
# request at that moment got a broken pipe (one in about 2,300 requests on the real node). A
# client that sends anything within the window is told to leave instead.
SERVER_KEEP_ALIVE_FAREWELL_SECONDS = 2
# A server process may take this long (period times failures: 3 min) to start listening before the
# kubelet restarts it; the model itself loads after that, reported by readiness, not liveness.
STARTUP_PROBE_PERIOD_SECONDS = 2
# How long one readiness or liveness probe may take. The kubelet's default, 1 s, timed out on the real
# node while the server's CPU was busy with other pods' inference (two cores, three rollouts at once):
# three such misses in a row take a healthy pod out of its Service, or restart it.
PROBE_TIMEOUT_SECONDS = 3
STARTUP_PROBE_FAILURES = 90
# How long in-flight requests may take to finish once the farewell window has passed.
SERVER_GRACEFUL_SHUTDOWN_SECONDS = 25
# The kubelet counts the preStop hook in the grace period: it covers the sleep, the farewell,
# the in-flight requests and a margin for the process to exit, before SIGKILL.
TERMINATION_GRACE_SECONDS = (
    PRE_STOP_SLEEP_SECONDS + SERVER_KEEP_ALIVE_FAREWELL_SECONDS + SERVER_GRACEFUL_SHUTDOWN_SECONDS + 5
)
# Fetching streams the artifact to disk: it needs little, and the server's GPU or memory
# requests would only make the pod harder to schedule.
FETCH_CPU_REQUEST = "100m"
FETCH_MEMORY_REQUEST = "256Mi"

_PVC_URI = re.compile(r"^pvc://(?P<claim>[^/]+)(?P<path>/.*)?$")


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment whose children are built: its identity for names and ownerReferences."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        """Read the owner from a ModelDeployment object as the API server returns it."""
        metadata = body["metadata"]
        return cls(
            api_version=body["apiVersion"],
            kind=body["kind"],
            name=metadata["name"],
            namespace=metadata["namespace"],
            uid=metadata["uid"],
        )


def deployment_name(name: str, variant: Variant) -> str:
    """Name of the Deployment of one variant: NAME-stable or NAME-canary."""
    return f"{name}-{variant}"


def service_name(name: str, variant: Variant | None = None) -> str:
    """Name of the entry Service (NAME) or of one variant's Service (NAME-stable, NAME-canary)."""
    return name if variant is None else f"{name}-{variant}"


def selector_labels(name: str, variant: Variant | None = None) -> dict[str, str]:
    """The labels that select a ModelDeployment's server pods, of one variant or of both."""
    labels = {LABEL_NAME: SERVER_APP_NAME, LABEL_INSTANCE: name}
    if variant is not None:
        labels[LABEL_VARIANT] = variant
    return labels


def _labels(name: str, variant: Variant | None = None) -> dict[str, str]:
    return {**selector_labels(name, variant), LABEL_MANAGED_BY: MANAGER_NAME}


def label_selector(name: str) -> str:
    """The selector of all server pods of a ModelDeployment, in the string form of status.selector."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(name).items()))


def owned_metadata(owner: Owner, name: str, variant: Variant | None) -> Manifest:
    """Metadata of a child: its name, the owner's namespace, the common labels and the ownerReference."""
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": _labels(owner.name, variant),
        "ownerReferences": [
            {
                "apiVersion": owner.api_version,
                "kind": owner.kind,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def model_revision(model: ModelSource) -> str:
    """A short hash that changes whenever anything about the model changes."""
    canonical = json.dumps(model.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _server_env(
    owner: Owner, spec: ModelDeploymentSpec, model: ModelSource, variant: Variant, settings: OperatorSettings
) -> list[Manifest]:
    batching = spec.server.batching
    values = {
        "MODEL_NAME": owner.name,
        "MODEL_VERSION": model.version or "",
        "VARIANT": variant,
        "MODEL_DIR": MODEL_DIR,
        "MODEL_FORMAT": model.format,
        "HTTP_PORT": str(HTTP_PORT),
        "WORKERS": str(spec.server.workers),
        "BATCHING_ENABLED": str(batching.enabled).lower(),
        "BATCH_MAX_SIZE": str(batching.max_size),
        "BATCH_WINDOW_MS": str(batching.window_ms),
        "ALLOW_PICKLE": str(settings.allow_pickle).lower(),
        "DRAIN_DELAY_SECONDS": str(SERVER_KEEP_ALIVE_FAREWELL_SECONDS),
        "GRACEFUL_SHUTDOWN_SECONDS": str(SERVER_GRACEFUL_SHUTDOWN_SECONDS),
    }
    # The server rejects an empty digest, so the variable is set only with a pin.
    if model.sha256 is not None:
        values["MODEL_SHA256"] = model.sha256
    env: list[Manifest] = [
        {"name": RESERVED_ENV_PREFIX + key, "value": value} for key, value in values.items()
    ]
    env.append(
        {
            "name": RESERVED_ENV_PREFIX + "NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        }
    )
    return env + _user_env(spec)


def _user_env(spec: ModelDeploymentSpec) -> list[Manifest]:
    return [item.model_dump(by_alias=True, exclude_none=True) for item in spec.server.env]


def _container_security_context() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }


def _tmp_mount() -> Manifest:
    # The root filesystem is read-only; libraries that need scratch space get a private emptyDir.
    return {"name": "tmp", "mountPath": "/tmp"}  # noqa: S108 - an emptyDir, not the host's /tmp


def _fetch_container(image: str, spec: ModelDeploymentSpec, model: ModelSource) -> Manifest:
    uri = model.uri
    mounts: list[Manifest] = [{"name": "model", "mountPath": MODEL_DIR}, _tmp_mount()]
    pvc = _PVC_URI.match(uri)
    if pvc is not None:
        uri = f"file://{MODEL_SOURCE_DIR}{pvc['path'] or '/'}"
        mounts.append({"name": "model-source", "mountPath": MODEL_SOURCE_DIR, "readOnly": True})
    args = ["fetch", "--uri", uri, "--dest", MODEL_DIR]
    if model.sha256 is not None:
        args += ["--sha256", model.sha256]
    container: Manifest = {
        "name": "fetch-model",
        "image": image,
        "command": ["modeldeploy-server"],
        "args": args,
        "resources": {"requests": {"cpu": FETCH_CPU_REQUEST, "memory": FETCH_MEMORY_REQUEST}},
        # The last lines of a failed fetch become the status message (digest mismatch, 404, ...).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _container_security_context(),
        "volumeMounts": mounts,
    }
    if spec.server.env:
        container["env"] = _user_env(spec)
    return container


def _server_container(
    owner: Owner,
    spec: ModelDeploymentSpec,
    model: ModelSource,
    variant: Variant,
    image: str,
    settings: OperatorSettings,
) -> Manifest:
    container: Manifest = {
        "name": "server",
        "image": image,
        "command": ["modeldeploy-server"],
        "args": ["serve"],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "env": _server_env(owner, spec, model, variant, settings),
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": 3,
        },
        # Until the process listens, the other probes wait: on a busy real node, eight server pods
        # starting at once took over 30 s to import their libraries, and the liveness probe (no
        # start-up allowance) killed them all in a loop, stable pods included.
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
            "failureThreshold": STARTUP_PROBE_FAILURES,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": 3,
        },
        # The kubelet's own sleep (no shell or sleep binary needed in the image).
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_SECONDS}}},
        "securityContext": _container_security_context(),
        "volumeMounts": [
            {"name": "model", "mountPath": MODEL_DIR, "readOnly": True},
            _tmp_mount(),
        ],
    }
    resources = spec.server.resources.model_dump(exclude_defaults=True)
    if resources:
        container["resources"] = resources
    return container


def _volumes(model: ModelSource) -> list[Manifest]:
    volumes: list[Manifest] = [{"name": "model", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    pvc = _PVC_URI.match(model.uri)
    if pvc is not None:
        volumes.append(
            {"name": "model-source", "persistentVolumeClaim": {"claimName": pvc["claim"], "readOnly": True}}
        )
    return volumes


def _pod_template(
    owner: Owner, spec: ModelDeploymentSpec, model: ModelSource, variant: Variant, settings: OperatorSettings
) -> Manifest:
    image = spec.server.image or settings.server_image
    pod_spec: Manifest = {
        # The server never calls the Kubernetes API; without a token a compromised model has less to steal.
        "automountServiceAccountToken": False,
        # Service links inject NAME_PORT-style variables; a Service named like the server's
        # prefix (modeldeploy-server) would otherwise leak variables into its settings.
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SERVER_USER_ID,
            "runAsGroup": SERVER_USER_ID,
            "fsGroup": SERVER_USER_ID,
            # A large model volume is not re-chowned on every start.
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [_fetch_container(image, spec, model)],
        "containers": [_server_container(owner, spec, model, variant, image, settings)],
        "volumes": _volumes(model),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = copy.deepcopy(spec.tolerations)
    if spec.affinity is not None:
        pod_spec["affinity"] = copy.deepcopy(spec.affinity)
    return {
        "metadata": {
            "labels": _labels(owner.name, variant),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(HTTP_PORT),
                "prometheus.io/path": "/metrics",
                MODEL_REVISION_ANNOTATION: model_revision(model),
            },
        },
        "spec": pod_spec,
    }


def build_deployment(
    owner: Owner,
    spec: ModelDeploymentSpec,
    settings: OperatorSettings,
    *,
    variant: Variant = "stable",
    model: ModelSource | None = None,
    replicas: int | None = None,
) -> Manifest:
    """The Deployment NAME-stable (or NAME-canary) of the generic model server.

    `model` defaults to the spec's model; during a rollout the stable Deployment keeps serving
    status.stable while the canary serves the spec's. `replicas` defaults to spec.replicas. The
    stable Deployment leaves spec.replicas out when an autoscaler owns it, so applying the
    manifest never resets the autoscaler's count.
    """
    served = model if model is not None else spec.model
    deployment_spec: Manifest = {
        "selector": {"matchLabels": selector_labels(owner.name, variant)},
        "progressDeadlineSeconds": _seconds(spec.progress_deadline),
        "revisionHistoryLimit": 3,
        "template": _pod_template(owner, spec, served, variant, settings),
    }
    if not (variant == "stable" and spec.autoscaling is not None):
        deployment_spec = {"replicas": spec.replicas if replicas is None else replicas, **deployment_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owned_metadata(owner, deployment_name(owner.name, variant), variant),
        "spec": deployment_spec,
    }


def _seconds(duration: str) -> int:
    return max(1, round(parse_duration(duration).total_seconds()))


def build_service(owner: Owner, variant: Variant | None = None) -> Manifest:
    """The entry Service NAME (all server pods) or the Service of one variant (NAME-stable, NAME-canary)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(owner, service_name(owner.name, variant), variant),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name, variant),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_horizontal_pod_autoscaler(owner: Owner, autoscaling: Autoscaling) -> Manifest:
    """The autoscaling/v2 HorizontalPodAutoscaler NAME of the stable Deployment."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": owned_metadata(owner, owner.name, "stable"),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": deployment_name(owner.name, "stable"),
            },
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": autoscaling.target_cpu_utilization_percentage,
                        },
                    },
                }
            ],
        },
    }


def build_pod_disruption_budget(owner: Owner, budget: PodDisruptionBudget) -> Manifest:
    """The policy/v1 PodDisruptionBudget NAME of the stable pods."""
    budget_spec: Manifest = {"selector": {"matchLabels": selector_labels(owner.name, "stable")}}
    if budget.min_available is not None:
        budget_spec["minAvailable"] = budget.min_available
    if budget.max_unavailable is not None:
        budget_spec["maxUnavailable"] = budget.max_unavailable
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": owned_metadata(owner, owner.name, "stable"),
        "spec": budget_spec,
    }


def build_children(owner: Owner, spec: ModelDeploymentSpec, settings: OperatorSettings) -> list[Manifest]:
    """Every object a ModelDeployment outside of a rollout owns, in the order to apply them.

    The HPA and the PDB appear only when the spec asks for them; an owned one missing from
    this list should be deleted.
    """
    children = [
        build_deployment(owner, spec, settings),
        build_service(owner),
        build_service(owner, "stable"),
        build_service(owner, "canary"),
    ]
    if spec.autoscaling is not None:
        children.append(build_horizontal_pod_autoscaler(owner, spec.autoscaling))
    if spec.pod_disruption_budget is not None:
        children.append(build_pod_disruption_budget(owner, spec.pod_disruption_budget))
    return children
