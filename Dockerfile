# syntax=docker/dockerfile:1
# Two images from one file: `--target server` (the generic model server) and `--target operator`.
# Each build stage runs the same install script that the tests run in a fresh virtualenv, and the
# final stages copy only the virtualenv: no compilers, no pip caches, no sources, non-root.
#
#   docker build --target server   -t modeldeploy-server:dev .
#   docker build --target operator -t modeldeploy-operator:dev .
#
# Pin PYTHON_IMAGE to a digest (python:3.11-slim-bookworm@sha256:…) in release builds.
#
# Without network inside the build (what `modeldeploy-localcluster images` does): mount a folder of
# wheels and name it, e.g. `podman build --network=none -v "$PWD/wheels:/wheelhouse:ro"
# --build-arg WHEELHOUSE=/wheelhouse …`; pip then installs from it only.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build-server
ARG WHEELHOUSE=""
COPY . /src
RUN WHEELHOUSE="$WHEELHOUSE" SLIM=1 bash /src/scripts/install-component.sh server /opt/modeldeploy /src

FROM ${PYTHON_IMAGE} AS build-operator
ARG WHEELHOUSE=""
COPY . /src
RUN WHEELHOUSE="$WHEELHOUSE" SLIM=1 bash /src/scripts/install-component.sh operator /opt/modeldeploy /src

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/modeldeploy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.source="https://github.com/modeldeploy/modeldeploy" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="modeldeploy"
# The uid the operator's pod template runs as (restricted pod security: runAsNonRoot). It needs a
# passwd entry: kopf asks getpass.getuser(), which fails for an unknown uid under a kubelet
# (podman adds an entry itself, which hides that).
RUN echo 'modeldeploy:x:65532:65532:modeldeploy:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'modeldeploy:x:65532:' >> /etc/group
USER 65532:65532

FROM runtime AS server
LABEL org.opencontainers.image.title="modeldeploy-server" \
      org.opencontainers.image.description="Generic model server: Open Inference Protocol (V2), KServe V1, Prometheus metrics"
COPY --from=build-server /opt/modeldeploy /opt/modeldeploy
EXPOSE 8080
ENTRYPOINT ["modeldeploy-server"]
CMD ["serve"]

FROM runtime AS operator
LABEL org.opencontainers.image.title="modeldeploy-operator" \
      org.opencontainers.image.description="Kubernetes operator for ModelDeployments with metric-checked canary rollouts"
COPY --from=build-operator /opt/modeldeploy /opt/modeldeploy
EXPOSE 8081
ENTRYPOINT ["modeldeploy-operator"]
