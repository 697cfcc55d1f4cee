#!/usr/bin/env bash
# modeldeploy on a local kind cluster, for machines with a Docker engine: builds both images from
# this repository, installs the Helm chart with them and serves the iris classifier until it is
# Ready. Not run by this repository's CI (.ci/run), whose machines have no Docker engine;
# .github/workflows/kind.yml runs it on GitHub's runners.
#
# Usage: scripts/kind-demo.sh [up]     create (or reuse) the cluster and deploy
#        scripts/kind-demo.sh delete   delete the cluster and everything in it
#
# Environment: KIND_CLUSTER_NAME (default modeldeploy), IMAGE_TAG (default dev; not `latest`,
# whose pull policy would make the node try a registry instead of the loaded image),
# DEMO_NAMESPACE (default modeldeploy-demo).
#
# Where the model comes from: kind has no object store, and the example's URIs point at
# placeholder hosts. The script builds one more image, modeldeploy-server-iris, from the server
# image plus two iris classifiers trained during the build with the image's own scikit-learn
# (so the versions match) and saved with skops. The ModelDeployment names that image in
# spec.server.image and a path inside it as its model URI; the fetch step copies the file like
# any other source. Version 1.1.0 is there to try a canary (see the hint at the end).
set -euo pipefail

cluster=${KIND_CLUSTER_NAME:-modeldeploy}
tag=${IMAGE_TAG:-dev}
demo_namespace=${DEMO_NAMESPACE:-modeldeploy-demo}
operator_namespace=modeldeploy-system
release=modeldeploy
context=kind-${cluster}
repo=$(cd "$(dirname "$0")/.." && pwd)

server_image=modeldeploy-server:${tag}
operator_image=modeldeploy-operator:${tag}
model_image=modeldeploy-server-iris:${tag}

say() { printf '\n=== %s\n' "$*"; }
fail() { printf 'kind-demo: %s\n' "$*" >&2; exit 1; }

# Every kubectl and helm call names the kind cluster's context, so the current context (perhaps a
# production cluster) is never touched.
kube() { kubectl --context "$context" "$@"; }

require_tools() {
  local missing=() tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if ((${#missing[@]})); then
    fail "missing on PATH: ${missing[*]}. Install them first: Docker (https://docs.docker.com/engine/install/), kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation), kubectl (https://kubernetes.io/docs/tasks/tools/), helm (https://helm.sh/docs/intro/install/)."
  fi
}

cluster_exists() {
  # Not grep -q: quitting at the first match could kill kind with SIGPIPE and, under pipefail,
  # turn a match into a failure.
  kind get clusters 2>/dev/null | grep -x "$cluster" >/dev/null
}

build_images() {
  say "building $server_image and $operator_image (the Dockerfile's server and operator targets)"
  docker build --target server -t "$server_image" "$repo"
  docker build --target operator -t "$operator_image" "$repo"

  say "building $model_image: the server image with two iris classifiers under /models/iris"
  docker build -t "$model_image" --build-arg BASE="$server_image" - <<'DOCKERFILE'
ARG BASE
FROM ${BASE}
# Root only to create /models; the files are world-readable and the image runs as 65532 again.
USER 0:0
RUN /opt/modeldeploy/bin/python -c '\
import os, skops.io; \
from sklearn.datasets import load_iris; \
from sklearn.linear_model import LogisticRegression; \
from sklearn.pipeline import make_pipeline; \
from sklearn.preprocessing import StandardScaler; \
features, labels = load_iris(return_X_y=True); \
models = {"1.0.0": LogisticRegression(max_iter=500), \
          "1.1.0": make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))}; \
[os.makedirs(f"/models/iris/{version}", exist_ok=True) for version in models]; \
[skops.io.dump(model.fit(features, labels), f"/models/iris/{version}/model.skops") \
 for version, model in models.items()]'
USER 65532:65532
DOCKERFILE
}

up() {
  require_tools docker kind kubectl helm
  docker info >/dev/null 2>&1 || fail "docker is installed but its engine does not answer (is the Docker daemon running?)"

  if cluster_exists; then
    say "reusing the kind cluster $cluster"
  else
    say "creating the kind cluster $cluster"
    kind create cluster --name "$cluster" --wait 120s
  fi

  build_images

  say "loading the images into the cluster's nodes"
  kind load docker-image --name "$cluster" "$server_image" "$operator_image" "$model_image"

  # Helm installs crds/ on the first install only; applying it first keeps a re-run current.
  say "installing the CRD and the Helm chart"
  kube apply --server-side -f "$repo/charts/modeldeploy/crds/"
  helm --kube-context "$context" upgrade --install "$release" "$repo/charts/modeldeploy" \
    --namespace "$operator_namespace" --create-namespace \
    --set image.repository=modeldeploy-operator \
    --set image.tag="$tag" \
    --set image.pullPolicy=IfNotPresent \
    --set serverImage.repository=modeldeploy-server \
    --set serverImage.tag="$tag"

  say "waiting for the operator"
  kube -n "$operator_namespace" wait --for=condition=Available "deployment/$release" --timeout=180s

  say "deploying the iris classifier in namespace $demo_namespace"
  kube create namespace "$demo_namespace" --dry-run=client -o yaml | kube apply -f -
  kube -n "$demo_namespace" apply -f - <<MANIFEST
apiVersion: modeldeploy.io/v1alpha1
kind: ModelDeployment
metadata:
  name: iris
spec:
  model:
    uri: /models/iris/1.0.0/model.skops
    format: sklearn
    version: "1.0.0"
  replicas: 2
  server:
    image: ${model_image}
  rollout:
    steps: [50]
    stepDuration: 2m
MANIFEST
  kube -n "$demo_namespace" wait --for=condition=Ready modeldeployment/iris --timeout=300s

  say "ready"
  kube -n "$demo_namespace" get md
  cat <<HINTS

Ask the model:
  kubectl --context $context -n $demo_namespace port-forward service/iris 8080:80 &
  curl -s localhost:8080/v1/models/iris:predict -H 'Content-Type: application/json' \\
    -d '{"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}'

Try a canary. This cluster has no Prometheus, so the analysis stays inconclusive and the
canary is rolled back after a few windows, unless you promote it by hand while it runs:
  kubectl --context $context -n $demo_namespace patch md iris --type merge \\
    -p '{"spec": {"model": {"uri": "/models/iris/1.1.0/model.skops", "version": "1.1.0"}}}'
  kubectl --context $context -n $demo_namespace get md iris -w
  kubectl --context $context -n $demo_namespace annotate md iris modeldeploy.io/promote=full:1 --overwrite
(or 'modeldeploy promote iris --full -n $demo_namespace' with the kind context current).

Remove everything: scripts/kind-demo.sh delete
HINTS
}

delete() {
  require_tools kind
  if cluster_exists; then
    kind delete cluster --name "$cluster"
  else
    echo "kind-demo: no kind cluster named $cluster"
  fi
}

case "${1:-up}" in
  up) up ;;
  delete | down) delete ;;
  *) fail "unknown command '$1'; usage: scripts/kind-demo.sh [up|delete]" ;;
esac
