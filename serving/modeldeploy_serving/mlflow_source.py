"""Resolving MLflow model URIs through a tracking server's REST API, without the mlflow package.

`models:/NAME/VERSION`, `models:/NAME@ALIAS`, `models:/MODEL_ID` (MLflow 3 logged models) and
`runs:/RUN_ID/PATH` become artifact locations: either a path behind the tracking server's artifact
proxy (`mlflow-artifacts:`), downloaded through it, or a storage URI (s3://, file://, http(s)://)
fetched directly.
"""

import base64
import posixpath
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import yaml

from modeldeploy_serving.errors import ArtifactError, FetchError
from modeldeploy_serving.transfer import with_retries

_VERSION = re.compile(r"[0-9]+")
_LOGGED_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")
_TIMEOUT = httpx.Timeout(30.0, connect=10.0)

MAX_LISTING_DEPTH = 32
MAX_LISTING_ENTRIES = 10_000

Downloader = Callable[[str, Path, Mapping[str, str] | None], None]


@dataclass(frozen=True)
class ModelReference:
    """A parsed `models:/` or `runs:/` URI."""

    kind: str
    """`version`, `alias`, `logged_model` or `run`."""
    name: str
    """The registered model's name, the logged model's id, or the run's id."""
    selector: str = ""
    """The version, the alias, or the path inside the run."""


@dataclass(frozen=True)
class ArtifactLocation:
    """Where the artifact's files are: behind the tracking server's proxy, or at a storage URI."""

    uri: str
    proxied_path: str | None = None


def parse_model_uri(uri: str) -> ModelReference:
    """Parse an MLflow model URI; ArtifactError says what shape was expected."""
    if uri.startswith("runs:/"):
        run_id, _, path = uri.removeprefix("runs:/").strip("/").partition("/")
        if not run_id or not path:
            raise ArtifactError(f"{uri}: expected runs:/RUN_ID/PATH")
        return ModelReference("run", run_id, path)
    if not uri.startswith("models:/"):
        raise ArtifactError(f"{uri} is not an MLflow model URI")
    rest = uri.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        if not name or not alias or "/" in alias:
            raise ArtifactError(f"{uri}: expected models:/NAME@ALIAS")
        return ModelReference("alias", name, alias)
    name, _, version = rest.rpartition("/")
    if not name and _LOGGED_MODEL_ID.fullmatch(version):
        return ModelReference("logged_model", version)
    if not name or not _VERSION.fullmatch(version):
        raise ArtifactError(
            f"{uri}: expected models:/NAME/VERSION (a number), models:/NAME@ALIAS or models:/MODEL_ID; "
            "stage names are not supported"
        )
    return ModelReference("version", name, version)


def location_of(artifact_uri: str) -> ArtifactLocation:
    """An artifact URI as the tracking server reports it, as a place to download from."""
    if artifact_uri.startswith("mlflow-artifacts:"):
        path = urllib.parse.urlsplit(artifact_uri).path.lstrip("/")
        return ArtifactLocation(uri=artifact_uri, proxied_path=path)
    return ArtifactLocation(uri=artifact_uri)


class TrackingClient:
    """The few calls of the MLflow tracking and registry REST API that fetching needs."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = dict(headers)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> "TrackingClient":
        """A client for `MLFLOW_TRACKING_URI`, authenticated like the mlflow client would be."""
        base_url = environ.get("MLFLOW_TRACKING_URI", "")
        if not base_url.startswith(("http://", "https://")):
            raise ArtifactError(
                "MLflow URIs need MLFLOW_TRACKING_URI set to the tracking server's http(s) URL"
            )
        headers: dict[str, str] = {}
        if token := environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {token}"
        elif (user := environ.get("MLFLOW_TRACKING_USERNAME")) and (
            password := environ.get("MLFLOW_TRACKING_PASSWORD")
        ):
            credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {credentials}"
        return cls(base_url, headers)

    def resolve(self, uri: str) -> list[ArtifactLocation]:
        """Where the files of the model that `uri` names are."""
        if uri.startswith("mlflow-artifacts:"):
            return [location_of(uri)]
        reference = parse_model_uri(uri)
        if reference.kind == "alias":
            reply = self._get(
                "mlflow/registered-models/alias", {"name": reference.name, "alias": reference.selector}
            )
            version = str(reply["model_version"]["version"])
            return [location_of(self._version_download_uri(reference.name, version))]
        if reference.kind == "version":
            return [location_of(self._version_download_uri(reference.name, reference.selector))]
        if reference.kind == "logged_model":
            reply = self._get(f"mlflow/logged-models/{reference.name}", {})
            return [location_of(str(reply["model"]["info"]["artifact_uri"]))]
        return [self._run_artifact(reference.name, reference.selector)]

    def _version_download_uri(self, name: str, version: str) -> str:
        reply = self._get("mlflow/model-versions/get-download-uri", {"name": name, "version": version})
        return str(reply["artifact_uri"])

    def _run_artifact(self, run_id: str, path: str) -> ArtifactLocation:
        """A run's artifact path; since MLflow 3 a model logged in a run is a logged model instead."""
        run = self._get("mlflow/runs/get", {"run_id": run_id})["run"]["info"]
        model_name, _, inner_path = path.partition("/")
        for model in self._logged_models(str(run["experiment_id"]), model_name):
            info = model.get("info", {})
            if info.get("source_run_id") == run_id:
                artifact_uri = str(info["artifact_uri"])
                return location_of(f"{artifact_uri}/{inner_path}" if inner_path else artifact_uri)
        return location_of(f"{str(run['artifact_uri']).rstrip('/')}/{path}")

    def _logged_models(self, experiment_id: str, name: str) -> list[dict[str, Any]]:
        escaped = name.replace("'", "\\'")
        body = {"experiment_ids": [experiment_id], "filter": f"name = '{escaped}'", "max_results": 100}
        try:
            reply = self._request("POST", "mlflow/logged-models/search", json=body)
        except ArtifactError:
            return []  # tracking servers before MLflow 3 have no logged models
        models = reply.get("models", [])
        return models if isinstance(models, list) else []

    def download_proxied(self, path: str, target: Path, download: Downloader) -> None:
        """Download a file or a directory tree from the tracking server's artifact proxy.

        The walk is bounded (MAX_LISTING_DEPTH levels, MAX_LISTING_ENTRIES entries) and refuses a
        directory listed twice, so a listing that recurses into itself ends with an error.
        """
        files = self._list_proxied(path)
        if not files:
            download(self._proxied_url(path), target / PurePosixPath(path).name, self._headers)
            return
        pending: list[tuple[str, str, list[dict[str, Any]] | None]] = [(path, "", files)]
        seen = {path}
        entries = 0
        while pending:
            remote_dir, local_dir, listing = pending.pop()
            for entry in listing if listing is not None else self._list_proxied(remote_dir):
                entries += 1
                if entries > MAX_LISTING_ENTRIES:
                    raise ArtifactError(
                        f"the MLflow artifact listing of {path} has more than {MAX_LISTING_ENTRIES} entries"
                    )
                name = PurePosixPath(str(entry.get("path", ""))).name
                if name in ("", ".", ".."):
                    continue
                remote = f"{remote_dir}/{name}"
                local = f"{local_dir}{name}"
                if not entry.get("is_dir"):
                    download(self._proxied_url(remote), target / local, self._headers)
                    continue
                if local.count("/") + 1 > MAX_LISTING_DEPTH:
                    raise ArtifactError(
                        f"the MLflow artifact listing of {path} is nested deeper than "
                        f"{MAX_LISTING_DEPTH} directories (does it list itself?)"
                    )
                if remote in seen:
                    raise ArtifactError(f"the MLflow artifact listing of {path} lists {remote} twice")
                seen.add(remote)
                pending.append((remote, f"{local}/", None))

    def _list_proxied(self, path: str) -> list[dict[str, Any]]:
        reply = self._get("mlflow-artifacts/artifacts", {"path": path})
        files = reply.get("files", [])
        return files if isinstance(files, list) else []

    def _proxied_url(self, path: str) -> str:
        return f"{self._base_url}/api/2.0/mlflow-artifacts/artifacts/{urllib.parse.quote(path)}"

    def _get(self, endpoint: str, params: Mapping[str, str]) -> dict[str, Any]:
        return self._request("GET", endpoint, params=params)

    def _request(
        self,
        method: str,
        endpoint: str,
        params: Mapping[str, str] | None = None,
        json: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        url = f"{self._base_url}/api/2.0/{endpoint}"

        def attempt() -> httpx.Response:
            reply = httpx.request(
                method, url, params=params, json=json, headers=self._headers, timeout=_TIMEOUT
            )
            if reply.status_code >= 500 or reply.status_code == 429:
                reply.raise_for_status()
            return reply

        reply = with_retries(attempt, f"asking the MLflow tracking server ({endpoint})")
        try:
            body = reply.json()
        except ValueError:
            body = {}
        if reply.status_code != 200:
            message = body.get("message") if isinstance(body, dict) else None
            raise ArtifactError(
                f"MLflow tracking server: {message or f'HTTP {reply.status_code}'} ({endpoint})"
            )
        if not isinstance(body, dict):
            raise ArtifactError(f"MLflow tracking server sent an unexpected answer ({endpoint})")
        return body


MLMODEL_FILE = "MLmodel"


def refuse_files_outside(directory: Path) -> None:
    """Refuse an MLflow model whose MLmodel names a file outside `directory` (absolute or `../`).

    The sha256 pin covers only the files inside the directory, so a model file outside it would be
    loaded unverified.
    """
    mlmodel_path = directory / MLMODEL_FILE
    if not mlmodel_path.is_file():
        return
    try:
        mlmodel = yaml.safe_load(mlmodel_path.read_text())
    except (OSError, UnicodeError, yaml.YAMLError) as error:
        raise FetchError(f"cannot read the fetched {MLMODEL_FILE}: {error}") from None
    flavors = mlmodel.get("flavors", {}) if isinstance(mlmodel, dict) else {}
    for flavor_name, flavor in flavors.items() if isinstance(flavors, dict) else []:
        if not isinstance(flavor, dict):
            continue
        for key in ("pickled_model", "data", "model_path"):
            value = flavor.get(key)
            if isinstance(value, str) and escapes_directory(value):
                raise FetchError(
                    f"{MLMODEL_FILE}: flavor {flavor_name}'s {key} {value!r} points outside the "
                    "model directory, where the sha256 pin does not reach"
                )


def escapes_directory(relative: str) -> bool:
    """Whether `relative`, taken inside a directory, leaves it (absolute, `..`, a NUL)."""
    if "\0" in relative or PurePosixPath(relative).is_absolute():
        return True
    normal = posixpath.normpath(relative)
    return normal == ".." or normal.startswith("../")
