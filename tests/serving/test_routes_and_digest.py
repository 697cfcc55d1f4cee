"""Pure helpers: the metrics' route classification and the artifact digest."""

import hashlib
from pathlib import Path

import pytest

from modeldeploy_serving.digest import artifact_root, artifact_sha256, tree_sha256, verify_sha256
from modeldeploy_serving.routes import classify_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2", ("v2", "server_metadata")),
        ("/v2/health/live", ("v2", "health")),
        ("/v2/health/ready", ("v2", "health")),
        ("/v2/models/iris/ready", ("v2", "health")),
        ("/v2/models/iris/versions/3/ready", ("v2", "health")),
        ("/v2/models/iris", ("v2", "metadata")),
        ("/v2/models/iris/versions/3", ("v2", "metadata")),
        ("/v2/models/iris/infer", ("v2", "infer")),
        ("/v2/models/other/versions/3/infer", ("v2", "infer")),
        ("/v1/models", ("v1", "models")),
        ("/v1/models/iris", ("v1", "metadata")),
        ("/v1/models/iris:predict", ("v1", "predict")),
        ("/metrics", None),
        ("/docs", None),
        ("/v2/models/iris/infer/extra", None),
        ("/v1/models/iris:explain", None),
    ],
)
def test_classify_path(path: str, expected: tuple[str, str] | None) -> None:
    assert classify_path(path) == expected


def test_a_single_file_artifact_has_the_digest_sha256sum_prints(tmp_path: Path) -> None:
    (tmp_path / "model.skops").write_bytes(b"weights")
    assert artifact_root(tmp_path) == tmp_path / "model.skops"
    assert artifact_sha256(tmp_path) == hashlib.sha256(b"weights").hexdigest()


def test_a_directory_digest_covers_names_and_contents_but_not_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text("flavors: {}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.skops").write_bytes(b"weights")
    before = artifact_sha256(tmp_path)
    assert before == tree_sha256(tmp_path)
    (tmp_path / ".modeldeploy-fetched").write_text("bookkeeping")
    assert artifact_sha256(tmp_path) == before
    (tmp_path / "sub" / "model.skops").rename(tmp_path / "sub" / "renamed.skops")
    assert artifact_sha256(tmp_path) != before


def test_verify_sha256_accepts_the_pin_in_any_case_and_refuses_another(tmp_path: Path) -> None:
    (tmp_path / "model.skops").write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert verify_sha256(tmp_path, digest.upper()) == digest
    assert verify_sha256(tmp_path, None) == digest
    with pytest.raises(ValueError, match="sha256 mismatch"):
        verify_sha256(tmp_path, "0" * 64)
