"""Reading an artifact from the model directory into a `Model`, safely by default.

Pickle-based formats (joblib, pickle, cloudpickle) run arbitrary code while loading, so they are
refused unless the operator's configuration allows them; skops files are loaded with the types
skops trusts only. The scikit-learn version an artifact was saved with is compared with the
server's before the model is served.
"""

import importlib
import json
import logging
import pickle
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import sklearn
import yaml
from sklearn.exceptions import InconsistentVersionWarning

from modeldeploy_serving.digest import artifact_root, verify_sha256
from modeldeploy_serving.errors import ArtifactError
from modeldeploy_serving.mlflow_source import escapes_directory
from modeldeploy_serving.model import SklearnModel
from modeldeploy_serving.settings import ModelFormat, VersionMismatchPolicy

logger = logging.getLogger(__name__)

SKOPS_SUFFIXES = (".skops",)
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
MLMODEL_FILE = "MLmodel"
WARM_UP_ROWS = 8


@dataclass(frozen=True)
class LoadedArtifact:
    """A loaded model and what is known about the artifact it came from."""

    model: SklearnModel
    digest: str
    format: str
    """`skops`, `joblib`, `pickle` or `mlflow`."""
    saved_with_sklearn: str | None
    """The scikit-learn version the artifact records, None when it records none."""


def is_version_compatible(artifact_version: str, server_version: str) -> bool:
    """Whether an artifact saved with one scikit-learn version may be served by another.

    Patch releases keep the pickled state compatible; a different minor version may not.
    """
    return _major_minor(artifact_version) == _major_minor(server_version)


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def check_version(artifact_version: str | None, policy: VersionMismatchPolicy) -> None:
    """Refuse or warn (by policy) when the artifact's scikit-learn version differs from ours."""
    if artifact_version is None or is_version_compatible(artifact_version, sklearn.__version__):
        return
    message = (
        f"the artifact was saved with scikit-learn {artifact_version}, the server has {sklearn.__version__}"
    )
    if policy is VersionMismatchPolicy.REFUSE:
        raise ArtifactError(f"{message}; refusing to serve it (set ON_VERSION_MISMATCH=warn to allow)")
    logger.warning("%s; serving it anyway as configured", message)


def detect_format(root: Path) -> str:
    """The concrete format of the artifact at `root` (a file or a directory)."""
    if root.is_dir():
        if (root / MLMODEL_FILE).is_file():
            return "mlflow"
        raise ArtifactError(
            f"{root} holds several files but no {MLMODEL_FILE} file; expected one model file "
            "or an MLflow model directory"
        )
    if root.suffix in SKOPS_SUFFIXES:
        return "skops"
    if root.suffix == ".joblib":
        return "joblib"
    if root.suffix in (".pkl", ".pickle"):
        return "pickle"
    raise ArtifactError(
        f"cannot tell the format of {root.name}: expected a file ending in "
        f"{', '.join(SKOPS_SUFFIXES + PICKLE_SUFFIXES)} or an MLflow model directory"
    )


def load_artifact(
    model_dir: Path,
    requested_format: ModelFormat,
    expected_sha256: str | None,
    allow_pickle: bool,
    on_version_mismatch: VersionMismatchPolicy,
    trusted_types: Collection[str] = (),
) -> LoadedArtifact:
    """Verify the digest, read the artifact and wrap it as a model; ArtifactError says why not."""
    if not model_dir.exists():
        raise ArtifactError(f"model directory {model_dir} does not exist")
    try:
        digest = verify_sha256(model_dir, expected_sha256)
    except ValueError as error:
        raise ArtifactError(str(error)) from None
    root = artifact_root(model_dir)
    concrete_format = detect_format(root)
    if requested_format is ModelFormat.MLFLOW and concrete_format != "mlflow":
        raise ArtifactError(f"format is set to mlflow but {root} has no {MLMODEL_FILE} file")
    if requested_format is ModelFormat.SKLEARN and concrete_format == "mlflow":
        raise ArtifactError(f"format is set to sklearn but {root} is an MLflow model directory")
    if concrete_format == "mlflow":
        model, saved_with = _load_mlflow(root, allow_pickle, trusted_types)
    else:
        estimator, saved_with = load_estimator_file(root, concrete_format, allow_pickle, trusted_types)
        model = _wrap(estimator)
    check_version(saved_with, on_version_mismatch)
    return LoadedArtifact(model=model, digest=digest, format=concrete_format, saved_with_sklearn=saved_with)


def load_estimator_file(
    path: Path, file_format: str, allow_pickle: bool, trusted_types: Collection[str] = ()
) -> tuple[Any, str | None]:
    """The object in a skops/joblib/pickle file and the scikit-learn version it was saved with."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        if file_format == "skops":
            estimator = _load_skops(path, trusted_types)
        else:
            estimator = load_pickle_based(path, file_format, allow_pickle)
    check_trees(estimator)
    saved_with = sklearn.__version__ if hasattr(estimator, "predict") else None
    for warning in caught:
        if isinstance(warning.message, InconsistentVersionWarning):
            saved_with = warning.message.original_sklearn_version
    return estimator, saved_with


# How deep check_trees looks into nested estimators (pipelines of ensembles of trees).
_MAX_ESTIMATOR_DEPTH = 16


def check_trees(estimator: Any) -> None:
    """ArtifactError for a decision tree anywhere in `estimator` whose node arrays are corrupt.

    scikit-learn's compiled tree code trusts these arrays: a child or feature index out of range
    reads outside memory and crashes the process at the first row that reaches the node. A file
    that skops loads with only trusted types can still hold such arrays.
    """
    from sklearn.tree._tree import Tree

    seen: set[int] = set()
    pending: list[tuple[Any, int]] = [(estimator, 0)]
    while pending:
        item, depth = pending.pop()
        if id(item) in seen or depth > _MAX_ESTIMATOR_DEPTH:
            continue
        seen.add(id(item))
        if isinstance(item, Tree):
            problem = tree_problem(
                np.asarray(item.children_left),
                np.asarray(item.children_right),
                np.asarray(item.feature),
                int(item.n_features),
                int(np.asarray(item.value).shape[0]),
            )
            if problem is not None:
                raise ArtifactError(f"the model holds a corrupt decision tree: {problem}")
        elif isinstance(item, (list, tuple)):
            pending.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, np.ndarray) and item.dtype == object:
            pending.extend((child, depth + 1) for child in item.reshape(-1))
        elif type(item).__module__.startswith("sklearn.") and hasattr(item, "__dict__"):
            pending.extend((child, depth + 1) for child in vars(item).values())


def tree_problem(
    left: npt.NDArray[Any], right: npt.NDArray[Any], feature: npt.NDArray[Any], n_features: int, n_values: int
) -> str | None:
    """What is wrong with a tree's node arrays, or None.

    Leaves have -1 for both children; an inner node's children come after it (scikit-learn adds
    nodes parent first), which also rules out cycles, and it splits on a feature the model has.
    """
    count = len(left)
    if len(right) != count or len(feature) != count or n_values != count:
        return f"its node arrays differ in length ({count}, {len(right)}, {len(feature)}, {n_values})"
    nodes = np.arange(count)
    leaf = left == -1
    if not np.array_equal(leaf, right == -1):
        return "a node has exactly one child"
    inner = ~leaf
    for name, children in (("left", left), ("right", right)):
        bad = inner & ((children <= nodes) | (children >= count))
        if bad.any():
            node = int(np.argmax(bad))
            return f"node {node} has {name} child {int(children[node])}, outside {node + 1}..{count - 1}"
    bad_feature = inner & ((feature < 0) | (feature >= n_features))
    if bad_feature.any():
        node = int(np.argmax(bad_feature))
        return f"node {node} splits on feature {int(feature[node])} of a model with {n_features}"
    return None


def is_sklearn_class(name: str) -> bool:
    """Whether `name` is a class defined by scikit-learn itself.

    skops refuses some of scikit-learn's own internal classes (a forest's `Tree`, a k-d tree, an
    optimizer's state). They hold fitted state and run no code of the artifact's choosing, unlike
    functions or other libraries' types, so they are trusted; anything else must be listed.
    """
    module_name, _, attribute = name.rpartition(".")
    if not module_name.startswith("sklearn.") or not attribute:
        return False
    try:
        found = getattr(importlib.import_module(module_name), attribute, None)
    except ImportError:
        return False
    return isinstance(found, type) and found.__module__.startswith("sklearn.")


def refused_types(untrusted: Sequence[str], trusted: Collection[str]) -> list[str]:
    """The types skops does not trust that are neither scikit-learn classes nor explicitly trusted."""
    return [name for name in untrusted if name not in trusted and not is_sklearn_class(name)]


def _load_skops(path: Path, trusted: Collection[str]) -> Any:
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as error:
        raise ArtifactError(f"{path.name} is not a readable skops file: {error}") from None
    refused = refused_types(untrusted, trusted)
    if refused:
        raise ArtifactError(
            f"{path.name} contains types skops does not trust by default: {', '.join(refused)}; "
            "refusing to load them (list them in SKOPS_TRUSTED_TYPES if you trust the artifact)"
        )
    return skops.io.load(path, trusted=list(untrusted))


def load_pickle_based(path: Path, file_format: str, allow_pickle: bool) -> Any:
    """Unpickle a joblib/pickle/cloudpickle file, which can run code: only when allowed."""
    if not allow_pickle:
        raise ArtifactError(
            f"{path.name} is a {file_format} file, which can run arbitrary code when loaded; "
            "save the model with skops, or set ALLOW_PICKLE=true for artifacts you trust"
        )
    try:
        if file_format == "joblib":
            return joblib.load(path)
        with path.open("rb") as stream:
            return pickle.load(stream)  # noqa: S301 - allowed explicitly by the configuration
    except ModuleNotFoundError as error:
        raise ArtifactError(f"{path.name} needs a module the server lacks: {error.name}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as error:
        raise ArtifactError(f"{path.name} is not a readable {file_format} file: {error}") from None


def _load_mlflow(
    directory: Path, allow_pickle: bool, trusted_types: Collection[str]
) -> tuple[SklearnModel, str | None]:
    try:
        mlmodel = yaml.safe_load((directory / MLMODEL_FILE).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ArtifactError(f"cannot read {directory / MLMODEL_FILE}: {error}") from None
    flavors = mlmodel.get("flavors", {}) if isinstance(mlmodel, dict) else {}
    flavor = flavors.get("sklearn")
    if not isinstance(flavor, dict):
        raise ArtifactError(
            f"the MLflow model has no sklearn flavor (flavors: {', '.join(flavors) or 'none'}); "
            "only scikit-learn models are served"
        )
    relative = str(flavor.get("pickled_model", "model.pkl"))
    # The directory may have been put in place without `fetch` (a volume, a copy), which refuses
    # such files: a file outside the directory is not covered by the sha256 pin either.
    if escapes_directory(relative):
        raise ArtifactError(
            f"the MLflow model's pickled_model {relative!r} points outside the model directory"
        )
    model_file = directory / relative
    serialization = str(flavor.get("serialization_format", "cloudpickle"))
    file_format = "skops" if serialization == "skops" else "pickle"
    if not model_file.is_file():
        raise ArtifactError(f"the MLflow model's file {model_file.name} is missing")
    estimator, saved_with = load_estimator_file(model_file, file_format, allow_pickle, trusted_types)
    recorded = flavor.get("sklearn_version")
    if isinstance(recorded, str):
        saved_with = recorded
    feature_names = _signature_feature_names(mlmodel)
    example = _input_example(directory, mlmodel)
    return _wrap(estimator, feature_names, example), saved_with


def _signature_feature_names(mlmodel: dict[str, Any]) -> list[str] | None:
    """Column names from a column-based MLflow signature, in order."""
    signature = mlmodel.get("signature")
    if not isinstance(signature, dict) or not isinstance(signature.get("inputs"), str):
        return None
    try:
        columns = json.loads(signature["inputs"])
    except json.JSONDecodeError:
        return None
    names = [column.get("name") for column in columns if isinstance(column, dict)]
    if not names or not all(isinstance(name, str) for name in names):
        return None
    return [str(name) for name in names]


def _input_example(directory: Path, mlmodel: dict[str, Any]) -> npt.NDArray[Any] | None:
    """The rows of the MLflow model's saved input example, for the warm-up prediction."""
    info = mlmodel.get("saved_input_example_info")
    if not isinstance(info, dict) or not isinstance(info.get("artifact_path"), str):
        return None
    try:
        example = json.loads((directory / info["artifact_path"]).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    # MLflow writes either {"columns": [...], "data": [[...]]} or a plain list of rows.
    rows = example.get("data") if isinstance(example, dict) else example
    try:
        array = np.asarray(rows, dtype=float)
    except (TypeError, ValueError):
        return None
    # A few rows are enough to exercise the model; the example may hold a whole training set.
    return array[:WARM_UP_ROWS] if array.ndim == 2 and array.size else None


def _wrap(
    estimator: Any, feature_names: list[str] | None = None, example: npt.NDArray[Any] | None = None
) -> SklearnModel:
    try:
        return SklearnModel(estimator, feature_names=feature_names, example_rows=example)
    except TypeError as error:
        raise ArtifactError(f"the artifact is not a model: {error}") from None
