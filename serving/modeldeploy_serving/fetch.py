"""Fetching a model artifact into a directory: the pod's init step and a CLI command.

Sources: a local path or `file://` URI, `http(s)://` (streamed, with timeouts and retries),
`s3://BUCKET/KEY` (an object, or every object under a prefix; the endpoint and credentials come
from the usual AWS environment variables), and MLflow `models:/NAME/VERSION`, `models:/NAME@ALIAS`
and `runs:/RUN_ID/PATH` resolved through the tracking server in `MLFLOW_TRACKING_URI`.

The artifact is staged in a hidden folder inside the destination, its digest checked against the
pin, and only then moved into place, so a failed fetch never leaves a half-written model behind.
"""

import os
import shutil
import signal
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from types import FrameType

from modeldeploy_serving import mlflow_source
from modeldeploy_serving.digest import artifact_sha256
from modeldeploy_serving.errors import FetchError
from modeldeploy_serving.transfer import ATTEMPTS, Budget, FetchLimits, download_http, redacted

FETCHED_MARKER = ".modeldeploy-fetched"
_STAGING = ".modeldeploy-staging"


def fetch(uri: str, dest: Path, sha256: str | None, environ: Mapping[str, str]) -> str:
    """Fetch `uri` into the directory `dest`, verify the pin and return the artifact's digest.

    A single file lands as `dest/<its name>`; a directory's contents land directly in `dest`. The
    previous artifact is replaced only once the new one is complete and verified; on any failure,
    or SIGTERM/SIGINT, the staging folder is removed and the previous artifact stays.
    """
    budget = Budget(FetchLimits.from_environment(environ))
    dest.mkdir(parents=True, exist_ok=True)
    _refuse_foreign_files(dest)
    staging = dest / _STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with _signals_raise_fetch_error(uri):
            try:
                fetch_into(uri, staging, environ, budget)
            except (OSError, ValueError) as error:
                raise FetchError(f"fetching {_describe(uri)}: {error}") from None
            mlflow_source.refuse_files_outside(staging)
            digest = artifact_sha256(staging)
            if sha256 is not None and digest != sha256.lower():
                raise FetchError(
                    f"{_describe(uri)}: sha256 mismatch: expected {sha256.lower()}, got {digest}"
                )
            _replace_previous_fetch(dest, staging)
            (dest / FETCHED_MARKER).write_text(f"{uri}\n{digest}\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return digest


def _describe(uri: str) -> str:
    return redacted(uri) if "://" in uri else uri


@contextmanager
def _signals_raise_fetch_error(uri: str) -> Iterator[None]:
    """Turn SIGTERM and SIGINT into a FetchError, so the staging folder is cleaned on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(number: int, frame: FrameType | None) -> None:
        raise FetchError(f"fetching {_describe(uri)}: interrupted by {signal.Signals(number).name}")

    previous = {number: signal.signal(number, interrupted) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _refuse_foreign_files(dest: Path) -> None:
    """An init step may run again over its own earlier fetch, but never over anything else."""
    if _visible(dest) and not (dest / FETCHED_MARKER).exists():
        raise FetchError(f"destination {dest} is not empty and was not written by a previous fetch")


def _visible(directory: Path) -> list[Path]:
    return [entry for entry in directory.iterdir() if not entry.name.startswith(".")]


def _replace_previous_fetch(dest: Path, staging: Path) -> None:
    """Swap the verified artifact in; the marker stays throughout, so a rerun can always clean up."""
    for entry in _visible(dest):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in staging.iterdir():
        entry.rename(dest / entry.name)


def fetch_into(uri: str, target: Path, environ: Mapping[str, str], budget: Budget) -> None:
    """Copy the artifact at `uri` into the existing directory `target`, within `budget`."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme in ("", "file"):
        copy_local(_local_path(uri), target, budget)
    elif scheme in ("http", "https"):
        download_http(uri, target / _file_name(uri), None, budget)
    elif scheme == "s3":
        download_s3(uri, target, budget)
    elif scheme in ("models", "runs", "mlflow-artifacts"):
        client = mlflow_source.TrackingClient.from_environment(environ)

        def download(url: str, path: Path, headers: Mapping[str, str] | None) -> None:
            download_http(url, path, headers, budget)

        for location in client.resolve(uri):
            if location.proxied_path is not None:
                client.download_proxied(location.proxied_path, target, download)
            else:
                fetch_into(location.uri, target, environ, budget)
    else:
        raise FetchError(
            f"unsupported model URI scheme '{scheme}' in {_describe(uri)}; use a path, file://, "
            "http(s)://, s3://, models:/ or runs:/"
        )


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
    return Path(uri)


def _file_name(uri: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(uri).path)).name
    if not name or name in (".", ".."):
        raise FetchError(f"{_describe(uri)} does not end in a file name; point it at the model file")
    if not name.isprintable():
        raise FetchError(f"{_describe(uri)}: the file name {name!r} holds control characters")
    return name


def copy_local(source: Path, target: Path, budget: Budget) -> None:
    """Copy a local file into `target`, or a directory's contents into it; symlinks are refused."""
    if source.is_dir():
        if target.resolve().is_relative_to(source.resolve()):
            raise FetchError(f"{source} contains the destination {target.parent}; fetch from elsewhere")
        files = _regular_files(source)
        budget.take(sum(path.stat().st_size for path in files), f"copying {source}")
        for path in files:
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
    elif source.is_file():
        budget.take(source.stat().st_size, f"copying {source}")
        shutil.copy2(source, target / source.name)
    else:
        raise FetchError(f"{source} does not exist")


def _regular_files(directory: Path) -> list[Path]:
    """Every file under `directory`; FetchError naming the first symlink or special file found."""
    files = []
    for root, dirs, names in os.walk(directory):
        for name in sorted(dirs + names):
            path = Path(root, name)
            if path.is_symlink():
                raise FetchError(
                    f"{path} is a symlink (to {path.readlink()}); a directory source must hold "
                    "regular files only, so copy the target in instead"
                )
            if name in names:
                if not path.is_file():
                    raise FetchError(f"{path} is not a regular file")
                files.append(path)
    return files


def download_s3(uri: str, target: Path, budget: Budget) -> None:
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
        size = _s3_object_size(client, bucket, key, ClientError) if key and not key.endswith("/") else None
        if size is not None:
            budget.take(size, f"downloading {uri}")
            client.download_file(bucket, key, str(target / PurePosixPath(key).name))
            return
        prefix = f"{key.rstrip('/')}/" if key else ""
        found = False
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                relative = item["Key"][len(prefix) :]
                if not relative or relative.endswith("/"):
                    continue
                budget.take(int(item.get("Size", 0)), f"downloading {uri}")
                destination = _inside(target, relative)
                destination.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, item["Key"], str(destination))
                found = True
    except (BotoCoreError, ClientError) as error:
        raise FetchError(f"downloading {uri}: {error}") from None
    if not found:
        raise FetchError(f"{uri}: no such object, and no objects under that prefix")


def _s3_object_size(client: object, bucket: str, key: str, client_error: type[Exception]) -> int | None:
    """The object's size, or None when there is no such object (the key may be a prefix)."""
    try:
        head = client.head_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    except client_error as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):  # type: ignore[attr-defined]
            return None
        raise
    return int(head.get("ContentLength", 0))


def _inside(target: Path, relative: str) -> Path:
    """`target/relative`, refusing paths that would escape `target` (`../` in a remote listing)."""
    destination = (target / relative).resolve()
    if not destination.is_relative_to(target.resolve()):
        raise FetchError(f"refusing to write {relative!r} outside the destination")
    return destination
