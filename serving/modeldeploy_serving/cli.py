"""`modeldeploy-server`: `fetch` (the pod's init step) and `serve`."""

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from modeldeploy_serving.errors import ArtifactError


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; the exit code is non-zero on failure, with a one-line message."""
    parser = argparse.ArgumentParser(prog="modeldeploy-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="fetch a model artifact into a directory")
    fetch_parser.add_argument(
        "--uri", required=True, help="path, file://, http(s)://, s3://, models:/ or runs:/"
    )
    fetch_parser.add_argument("--dest", required=True, type=Path, help="the directory to fetch into")
    fetch_parser.add_argument(
        "--sha256", type=_sha256, help="refuse the artifact unless its digest is this hex SHA-256"
    )
    commands.add_parser("serve", help="serve the model (configured by MODELDEPLOY_SERVER_* variables)")
    arguments = parser.parse_args(argv)
    if arguments.command == "fetch":
        return _fetch(arguments.uri, arguments.dest, arguments.sha256)
    return _serve()


def _sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise argparse.ArgumentTypeError("expected 64 hexadecimal digits")
    return value.lower()


def _fetch(uri: str, dest: Path, sha256: str | None) -> int:
    from modeldeploy_serving.fetch import fetch

    try:
        digest = fetch(uri, dest, sha256, os.environ)
    except (ArtifactError, OSError) as error:
        print(f"modeldeploy-server fetch: error: {error}", file=sys.stderr)
        return 1
    print(f"fetched {uri} into {dest} (sha256 {digest})")
    return 0


def _serve() -> int:
    from modeldeploy_serving.server import configure_logging, serve
    from modeldeploy_serving.settings import ServerSettings

    try:
        settings = ServerSettings()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())
        print(f"modeldeploy-server serve: error: invalid settings: {problems}", file=sys.stderr)
        return 2
    configure_logging()
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
