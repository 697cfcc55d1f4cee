"""The digest that `sha256` pins refer to, shared by `fetch` and the server's load step.

A single-file artifact's digest is the file's plain SHA-256 (what `sha256sum` prints). A
directory's digest is the SHA-256 of its sorted listing: one `relative/path<TAB>file-sha256`
line per regular file, so renaming, adding or changing any file changes it. Hidden entries (names
starting with a dot) are bookkeeping of the fetch step and are left out.
"""

import hashlib
from pathlib import Path

_CHUNK_BYTES = 1024 * 1024


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(directory: Path) -> str:
    """The hex SHA-256 of a directory tree's listing of paths and file digests."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            digest.update(f"{relative.as_posix()}\t{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def artifact_root(location: Path) -> Path:
    """The artifact inside a model directory: its only visible file, or the directory itself."""
    if location.is_dir():
        entries = [entry for entry in location.iterdir() if not entry.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_file():
            return entries[0]
    return location


def artifact_sha256(location: Path) -> str:
    """The digest a `sha256` pin is compared with (see the module's docstring)."""
    root = artifact_root(location)
    return file_sha256(root) if root.is_file() else tree_sha256(root)


def verify_sha256(location: Path, expected: str | None) -> str:
    """The artifact's digest; raises ValueError when it differs from a given pin."""
    actual = artifact_sha256(location)
    if expected is not None and actual != expected.lower():
        raise ValueError(f"sha256 mismatch for {location}: expected {expected.lower()}, got {actual}")
    return actual
