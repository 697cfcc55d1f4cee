"""Fetching a model artifact into a directory: the pod's init step and a CLI command.

Sources: a local path or `file://` URI, `http(s)://` (streamed, with timeouts and retries),
`s3://BUCKET/KEY` (an object, or every object under a prefix; the endpoint and credentials come
from the usual AWS environment variables), and MLflow `models:/NAME/VERSION`, `models:/NAME@ALIAS`
and `runs:/RUN_ID/PATH` resolved through the tracking server in `MLFLOW_TRACKING_URI`.

The artifact is staged in a hidden folder inside the destination, its digest checked against the
pin, and only then moved into place, so a failed fetch never leaves a half-written model behind.
"""

import shutil
import urllib.parse
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from modeldeploy_serving import mlflow_source
from modeldeploy_serving.digest import artifact_sha256
from modeldeploy_serving.errors import FetchError
from modeldeploy_serving.transfer import ATTEMPTS, download_http

FETCHED_MARKER = ".modeldeploy-fetched"
_STAGING = ".modeldeploy-staging"


def fetch(uri: str, dest: Path, sha256: str | None, environ: Mapping[str, str]) -> str:
    """Fetch `uri` into the directory `dest`, verify the pin and return the artifact's digest.

    A single file lands as `dest/<its name>`; a directory's contents land directly in `dest`.
    """
    dest.mkdir(parents=True, exist_ok=True)
    _clear_previous_fetch(dest)
    staging = dest / _STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        fetch_into(uri, staging, environ)
        digest = artifact_sha256(staging)
        if sha256 is not None and digest != sha256.lower():
            raise FetchError(f"{uri}: sha256 mismatch: expected {sha256.lower()}, got {digest}")
        for entry in staging.iterdir():
            entry.rename(dest / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (dest / FETCHED_MARKER).write_text(f"{uri}\n{digest}\n")
    return digest


def _clear_previous_fetch(dest: Path) -> None:
    """Remove what an earlier fetch left (an init step may run again); refuse to touch anything else."""
    visible = [entry for entry in dest.iterdir() if not entry.name.startswith(".")]
    if not visible:
        return
    if not (dest / FETCHED_MARKER).exists():
        raise FetchError(f"destination {dest} is not empty and was not written by a previous fetch")
    for entry in visible:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def fetch_into(uri: str, target: Path, environ: Mapping[str, str]) -> None:
    """Copy the artifact at `uri` into the existing directory `target`."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme in ("", "file"):
        copy_local(_local_path(uri), target)
    elif scheme in ("http", "https"):
        download_http(uri, target / _file_name(uri))
    elif scheme == "s3":
        download_s3(uri, target)
    elif scheme in ("models", "runs", "mlflow-artifacts"):
        client = mlflow_source.TrackingClient.from_environment(environ)
        for location in client.resolve(uri):
            if location.proxied_path is not None:
                client.download_proxied(location.proxied_path, target, download_http)
            else:
                fetch_into(location.uri, target, environ)
    else:
        raise FetchError(
            f"unsupported model URI scheme '{scheme}' in {uri}; use a path, file://, http(s)://, s3://, "
            "models:/ or runs:/"
        )


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
    return Path(uri)


def _file_name(uri: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(uri).path)).name
    if not name or name in (".", ".."):
        raise FetchError(f"{uri} does not end in a file name; point it at the model file")
    return name


def copy_local(source: Path, target: Path) -> None:
    """Copy a local file into `target`, or a directory's contents into it."""
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True, symlinks=False)
    elif source.is_file():
        shutil.copy2(source, target / source.name)
    else:
        raise FetchError(f"{source} does not exist")


def download_s3(uri: str, target: Path) -> None:
    """Download an S3 object, or every object under a prefix, into `target`."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    parts = urllib.parse.urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket:
        raise FetchError(f"{uri} names no bucket; expected s3://BUCKET/KEY")
    config = Config(
        retries={"max_attempts": ATTEMPTS, "mode": "standard"}, connect_timeout=10, read_timeout=60
    )
    client = boto3.client("s3", config=config)
    try:
        if key and not key.endswith("/") and _s3_object_exists(client, bucket, key, ClientError):
            client.download_file(bucket, key, str(target / PurePosixPath(key).name))
            return
        prefix = f"{key.rstrip('/')}/" if key else ""
        found = False
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                relative = item["Key"][len(prefix) :]
                if not relative or relative.endswith("/"):
                    continue
                destination = _inside(target, relative)
                destination.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, item["Key"], str(destination))
                found = True
    except (BotoCoreError, ClientError) as error:
        raise FetchError(f"downloading {uri}: {error}") from None
    if not found:
        raise FetchError(f"{uri}: no such object, and no objects under that prefix")


def _s3_object_exists(client: object, bucket: str, key: str, client_error: type[Exception]) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    except client_error as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):  # type: ignore[attr-defined]
            return False
        raise
    return True


def _inside(target: Path, relative: str) -> Path:
    """`target/relative`, refusing paths that would escape `target` (`../` in a remote listing)."""
    destination = (target / relative).resolve()
    if not destination.is_relative_to(target.resolve()):
        raise FetchError(f"refusing to write {relative!r} outside the destination")
    return destination
