"""A Gateway API implementation on the real node: Traefik's kubernetesGateway provider.

Traefik is its own data plane (no Envoy), so one plain process serves the Gateways of its
GatewayClass. It runs inside the node's network namespace, where the pod IPs it sends requests to
are reachable, and watches the API server as a service account of its own, bound to the
ClusterRole that Traefik documents for this provider (read from its Go module, not copied). The
Gateway's listener port must be one of Traefik's entry points: `web_port`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from modeldeploy_localcluster.build import (
    TRAEFIK_MODULE,
    Progress,
    _go_environment,
    _module_info,
    cache_root,
    ensure_gateway_binary,
)
from modeldeploy_localcluster.cluster import (
    ClusterError,
    Component,
    free_port,
    launch_component,
    process_alive,
    stop_components,
)
from modeldeploy_localcluster.netns_forward import _in_namespace
from modeldeploy_localcluster.node import NODE_IP, RealNode
from modeldeploy_localcluster.versions import TRAEFIK

CONTROLLER_NAME = "traefik.io/gateway-controller"
NAMESPACE = "modeldeploy-gateway"
SERVICE_ACCOUNT = "traefik"
RBAC_DOCUMENT = "docs/content/reference/dynamic-configuration/kubernetes-gateway-rbac.yml"
START_TIMEOUT_SECONDS = 60.0


def documented_rules(rbac_document: str) -> list[dict[str, Any]]:
    """The rules of the ClusterRole in Traefik's documented RBAC for the kubernetesGateway provider."""
    roles = [doc for doc in yaml.safe_load_all(rbac_document) if doc and doc.get("kind") == "ClusterRole"]
    if len(roles) != 1:
        raise ClusterError(f"expected one ClusterRole in Traefik's {RBAC_DOCUMENT}, found {len(roles)}")
    rules: list[dict[str, Any]] = roles[0]["rules"]
    return rules


def rbac_objects(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Traefik's namespace and service account, and its ClusterRole bound to that account."""
    name = "modeldeploy-gateway-traefik"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}],
        },
    ]


def static_config(
    apiserver_url: str, ca_file: Path, token: str, web_port: int, admin_port: int, access_log: Path
) -> dict[str, Any]:
    """Traefik's static configuration: the Gateway provider only, its API and ping on an admin port."""
    return {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": {
            "web": {"address": f"{NODE_IP}:{web_port}"},
            "traefik": {"address": f"{NODE_IP}:{admin_port}"},
        },
        "providers": {
            "kubernetesGateway": {
                "endpoint": apiserver_url,
                "token": token,
                "certAuthFilePath": str(ca_file),
                "statusAddress": {"ip": NODE_IP},
            }
        },
        # Read-only views of what Traefik applied, so tests can tell when a route change is live.
        "api": {"insecure": True, "dashboard": False},
        "ping": {"entryPoint": "traefik"},
        "log": {"level": "INFO"},
        # Only failed requests, with the backend each was sent to: what a test needs to explain one.
        "accessLog": {"filePath": str(access_log), "format": "json", "filters": {"statusCodes": ["500-599"]}},
    }


def get_in_netns(netns_path: str, url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url`` from inside a network namespace (only there do the node's addresses exist).

    The socket is made inside the namespace and stays there; no proxy is ever consulted.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.sock = _in_namespace(netns_path, lambda: socket.create_connection((host, port), timeout))
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        reply = connection.getresponse()
        return reply.status, reply.read()
    except (OSError, http.client.HTTPException) as error:
        raise ClusterError(f"GET {url} in {netns_path} failed: {error}") from error
    finally:
        connection.close()


class TraefikGateway:
    """Traefik serving Gateway API routes on the real node, started and stopped by PID."""

    def __init__(self, node: RealNode, binary: Path | None = None, progress: Progress | None = None) -> None:
        self._progress: Progress = progress or (lambda message: None)
        self.node = node
        self.binary = binary or ensure_gateway_binary(self._progress)
        # The ports are inside the node's namespace, where nothing else of ours listens on them.
        self.web_port = free_port()
        self.admin_port = free_port()
        self.workdir = node.workdir / "gateway"
        self.access_log = node.workdir / "logs" / "traefik-access.log"
        self.component: Component | None = None

    @property
    def url(self) -> str:
        """Where the Gateway listens, inside the node's network namespace."""
        return f"http://{NODE_IP}:{self.web_port}"

    def start(self) -> None:
        started = time.monotonic()
        cluster = self.node.cluster
        rbac = (
            Path(_module_info(TRAEFIK_MODULE, TRAEFIK, cache_root(), _go_environment())["Dir"])
            / RBAC_DOCUMENT
        )
        objects = rbac_objects(documented_rules(rbac.read_text()))
        cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(objects))
        token = cluster.kubectl("create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, "--duration=2h").strip()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "traefik.yaml"
        config.touch(mode=0o600)  # it holds the token
        apiserver = f"https://{NODE_IP}:{cluster.ports['apiserver']}"
        ca_file = cluster.workdir / "pki" / "ca.crt"
        config.write_text(
            yaml.safe_dump(
                static_config(apiserver, ca_file, token, self.web_port, self.admin_port, self.access_log)
            )
        )
        log_path = cluster.workdir / "logs" / "traefik.log"
        self._progress(f"starting traefik {TRAEFIK} (log: {log_path})")
        _, self.component = launch_component(
            "traefik",
            self.node.in_netns(str(self.binary), f"--configFile={config}"),
            log_path,
            self.workdir,
            # Traefik takes in-cluster credentials from these when set; it is not in a pod.
            env={k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")},
        )
        try:
            self._wait_until_pinged(START_TIMEOUT_SECONDS)
        except BaseException:
            self.stop()
            raise
        self._progress(f"traefik answers at {self.url} after {time.monotonic() - started:.1f}s")

    def stop(self) -> None:
        if self.component is not None:
            stop_components([self.component], self._progress)
            self.component = None

    def api(self, path: str) -> Any:
        """A read from Traefik's own API (``/api/http/services``, …): what it applied, as JSON."""
        status, body = get_in_netns(self.node.netns_path, f"http://{NODE_IP}:{self.admin_port}{path}")
        if status != 200:
            raise ClusterError(f"traefik API {path} answered {status}: {body[:300]!r}")
        return json.loads(body)

    def failed_requests(self) -> list[dict[str, Any]]:
        """Traefik's access-log entries of requests it answered with a 5xx (backend, timings)."""
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def log_text(self) -> str:
        return Path(self.component.log).read_text(errors="replace") if self.component else ""

    def _wait_until_pinged(self, timeout: float) -> None:
        assert self.component is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process_alive(self.component.pid):
                tail = "".join(self.log_text().splitlines(True)[-15:])
                raise ClusterError(f"traefik exited; log: {self.component.log}\n{tail}")
            with contextlib.suppress(ClusterError):
                url = f"http://{NODE_IP}:{self.admin_port}/ping"
                if get_in_netns(self.node.netns_path, url, timeout=2.0)[0] == 200:
                    return
            time.sleep(0.5)
        raise ClusterError(f"traefik did not answer /ping within {timeout:.0f}s; log: {self.component.log}")
