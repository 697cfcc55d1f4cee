"""The images as built here, run the way a kubelet runs them: uid 65532, read-only root, no
passwd entry added by the runtime (podman adds one unless told not to, which hid a crash)."""

from __future__ import annotations

import subprocess

import pytest

from modeldeploy_localcluster.images import BuiltImage

pytestmark = pytest.mark.realnode


def _run_as_kubelet_would(image: str, *command: str) -> subprocess.CompletedProcess[str]:
    podman = ["podman", "run", "--rm", "--network=none", "--read-only", "--passwd=false"]
    return subprocess.run(
        [*podman, "--user", "65532:65532", "--entrypoint", command[0], image, *command[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("target", ["server", "operator"])
def test_image_user_has_a_passwd_entry(built_images: dict[str, BuiltImage], target: str) -> None:
    # kopf's peering calls getpass.getuser(); without an entry for 65532 it raises KeyError.
    result = _run_as_kubelet_would(
        built_images[target].name, "python", "-c", "import getpass, os; print(os.getuid(), getpass.getuser())"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["65532", "modeldeploy"]


def test_slim_server_image_still_imports_what_it_serves(built_images: dict[str, BuiltImage]) -> None:
    modules = (
        "modeldeploy_serving.server, modeldeploy_serving.fetch, sklearn.ensemble, pandas, skops.io, boto3"
    )
    result = _run_as_kubelet_would(built_images["server"].name, "python", "-c", f"import {modules}")
    assert result.returncode == 0, result.stderr
    # The build dropped pip and the packages' test suites: the image holds only what runs.
    listing = _run_as_kubelet_would(
        built_images["server"].name, "python", "-c",
        "import importlib.util as u, pathlib, sklearn; "
        "print(u.find_spec('pip') is None, (pathlib.Path(sklearn.__file__).parent / 'tests').exists())",
    )  # fmt: skip
    assert listing.stdout.split() == ["True", "False"], listing.stderr


def test_operator_image_has_no_ml_libraries(built_images: dict[str, BuiltImage]) -> None:
    result = _run_as_kubelet_would(
        built_images["operator"].name, "python", "-c",
        "import importlib.util as u; print([m for m in ('numpy', 'sklearn', 'pip') if u.find_spec(m)])",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
