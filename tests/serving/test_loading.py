"""Loading artifacts: skops by default, pickle only when allowed, MLflow directories, and checks."""

import hashlib
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn
import skops.io
import yaml
from sklearn.base import BaseEstimator
from sklearn.datasets import load_iris
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier

from modeldeploy_serving.errors import ArtifactError
from modeldeploy_serving.loading import (
    check_version,
    is_sklearn_class,
    is_version_compatible,
    load_artifact,
    refused_types,
)
from modeldeploy_serving.settings import ModelFormat, VersionMismatchPolicy

IRIS_ROW = np.array([[5.1, 3.5, 1.4, 0.2]])


def load(
    directory: Path,
    model_format: ModelFormat = ModelFormat.AUTO,
    sha256: str | None = None,
    allow_pickle: bool = False,
    policy: VersionMismatchPolicy = VersionMismatchPolicy.REFUSE,
) -> Any:
    return load_artifact(directory, model_format, sha256, allow_pickle, policy)


class Doubler(BaseEstimator):  # type: ignore[misc]
    """A type skops does not know, so it must not be trusted."""

    def fit(self, features: Any, target: Any = None) -> "Doubler":
        return self

    def predict(self, features: Any) -> Any:
        return np.asarray(features)[:, 0] * 2


def test_a_skops_file_loads_as_a_classifier(iris_skops_dir: Path) -> None:
    loaded = load(iris_skops_dir)
    assert loaded.format == "skops"
    assert loaded.saved_with_sklearn == sklearn.__version__
    assert loaded.digest == hashlib.sha256((iris_skops_dir / "model.skops").read_bytes()).hexdigest()
    assert loaded.model.description.classes == (0, 1, 2)
    assert loaded.model.predict(IRIS_ROW, ["predict"])["predict"].tolist() == [0]


def test_a_skops_file_with_untrusted_types_is_refused_unless_listed(tmp_path: Path) -> None:
    skops.io.dump(Doubler().fit(None), tmp_path / "model.skops")
    with pytest.raises(ArtifactError, match=r"does not trust.*Doubler.*SKOPS_TRUSTED_TYPES"):
        load(tmp_path)
    trusted = {f"{Doubler.__module__}.Doubler"}
    loaded = load_artifact(tmp_path, ModelFormat.AUTO, None, False, VersionMismatchPolicy.REFUSE, trusted)
    assert loaded.model.predict(np.array([[2.0]]), ["predict"])["predict"].tolist() == [4.0]


@pytest.mark.parametrize(
    "estimator",
    [
        RandomForestClassifier(n_estimators=3, random_state=0),
        HistGradientBoostingClassifier(max_iter=3),
        KNeighborsClassifier(algorithm="kd_tree"),
        MLPClassifier(max_iter=5, random_state=0),
    ],
    ids=lambda estimator: type(estimator).__name__,
)
def test_skops_files_with_scikit_learns_own_internal_classes_load(tmp_path: Path, estimator: Any) -> None:
    features, labels = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skops.io.dump(estimator.fit(features, labels), tmp_path / "model.skops")
    expected = estimator.predict(IRIS_ROW).tolist()
    assert load(tmp_path).model.predict(IRIS_ROW, ["predict"])["predict"].tolist() == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sklearn.tree._tree.Tree", True),
        ("sklearn.neighbors._kd_tree.KDTree", True),
        ("sklearn.utils.validation.check_array", False),
        ("sklearn.tree._tree.NoSuchThing", False),
        ("sklearn.no_such_module.Thing", False),
        ("builtins.eval", False),
        ("os.system", False),
        ("sklearn", False),
    ],
)
def test_is_sklearn_class(name: str, expected: bool) -> None:
    assert is_sklearn_class(name) is expected


def test_refused_types_keeps_what_is_neither_sklearn_nor_listed() -> None:
    untrusted = ["sklearn.tree._tree.Tree", "mypackage.Custom", "builtins.eval"]
    assert refused_types(untrusted, {"mypackage.Custom"}) == ["builtins.eval"]


def test_joblib_and_pickle_files_are_refused_unless_allowed(iris_joblib_dir: Path) -> None:
    with pytest.raises(ArtifactError, match=r"can run arbitrary code.*ALLOW_PICKLE"):
        load(iris_joblib_dir)
    loaded = load(iris_joblib_dir, allow_pickle=True)
    assert loaded.format == "joblib"
    assert loaded.model.predict(IRIS_ROW, ["predict"])["predict"].tolist() == [0]


def test_a_pickle_file_loads_when_allowed(tmp_path: Path, diabetes_regressor: Any) -> None:
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(diabetes_regressor))
    loaded = load(tmp_path, allow_pickle=True)
    assert loaded.format == "pickle"
    assert loaded.model.description.classes is None


def test_a_corrupt_pickle_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ArtifactError, match=r"model.pkl is not a readable pickle file"):
        load(tmp_path, allow_pickle=True)


def test_a_corrupt_skops_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.skops").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a readable skops file"):
        load(tmp_path)


def test_an_object_without_predict_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(ArtifactError, match="not a model"):
        load(tmp_path, allow_pickle=True)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"model.onnx": b"x"}, "cannot tell the format of model.onnx"),
        ({"a.skops": b"x", "b.skops": b"y"}, "holds several files but no MLmodel"),
    ],
)
def test_unrecognised_artifacts_are_a_clear_error(
    tmp_path: Path, files: dict[str, bytes], message: str
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ArtifactError, match=message):
        load(tmp_path)


def test_a_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load(tmp_path / "absent")


def test_a_digest_pin_that_does_not_match_is_refused(iris_skops_dir: Path) -> None:
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load(iris_skops_dir, sha256="0" * 64)
    digest = hashlib.sha256((iris_skops_dir / "model.skops").read_bytes()).hexdigest()
    assert load(iris_skops_dir, sha256=digest).digest == digest


def test_the_configured_format_must_match_the_artifact(iris_skops_dir: Path) -> None:
    with pytest.raises(ArtifactError, match="format is set to mlflow"):
        load(iris_skops_dir, model_format=ModelFormat.MLFLOW)


@pytest.mark.parametrize(
    ("artifact", "server", "compatible"),
    [
        ("1.5.2", "1.5.0", True),
        ("1.5.2", "1.6.0", False),
        ("0.24.2", "1.0.0", False),
        ("1.9.1", "1.9.1", True),
    ],
)
def test_version_compatibility_is_by_minor_release(artifact: str, server: str, compatible: bool) -> None:
    assert is_version_compatible(artifact, server) is compatible


def test_check_version_refuses_or_warns(caplog: pytest.LogCaptureFixture) -> None:
    check_version(None, VersionMismatchPolicy.REFUSE)
    check_version(sklearn.__version__, VersionMismatchPolicy.REFUSE)
    with pytest.raises(ArtifactError, match=r"saved with scikit-learn 0\.20\.0.*ON_VERSION_MISMATCH=warn"):
        check_version("0.20.0", VersionMismatchPolicy.REFUSE)
    check_version("0.20.0", VersionMismatchPolicy.WARN)
    assert "serving it anyway" in caplog.text


@pytest.fixture(scope="module")
def mlflow_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    features, labels = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=500).fit(features, labels)
    directory = tmp_path_factory.mktemp("mlflow") / "model"
    signature = infer_signature(features, model.predict(features))
    mlflow.sklearn.save_model(model, directory, signature=signature, input_example=features.head(3))
    return directory


def test_an_mlflow_model_directory_loads_without_mlflow(mlflow_model_dir: Path) -> None:
    loaded = load(mlflow_model_dir)
    assert loaded.format == "mlflow"
    assert loaded.saved_with_sklearn == sklearn.__version__
    description = loaded.model.description
    assert description.feature_names == (
        "sepal length (cm)",
        "sepal width (cm)",
        "petal length (cm)",
        "petal width (cm)",
    )
    warm_up = loaded.model.warm_up_input()
    assert warm_up is not None and warm_up.from_artifact
    assert warm_up.rows.shape == (3, 4)
    assert loaded.model.predict(IRIS_ROW, ["predict"])["predict"].tolist() == [0]


def test_an_mlflow_model_saved_with_another_sklearn_is_refused_by_default(
    mlflow_model_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "model"
    copy.mkdir()
    for path in mlflow_model_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    mlmodel = yaml.safe_load((copy / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"]["sklearn_version"] = "0.20.0"
    (copy / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(ArtifactError, match=r"0\.20\.0"):
        load(copy)
    assert load(copy, policy=VersionMismatchPolicy.WARN).saved_with_sklearn == "0.20.0"


def test_a_cloudpickled_mlflow_model_needs_pickle_allowed(tmp_path: Path, iris_classifier: Any) -> None:
    import mlflow.sklearn

    directory = tmp_path / "model"
    mlflow.sklearn.save_model(iris_classifier, directory, serialization_format="cloudpickle")
    with pytest.raises(ArtifactError, match="ALLOW_PICKLE"):
        load(directory)
    assert load(directory, allow_pickle=True).model.predict(IRIS_ROW, ["predict"])["predict"].tolist() == [0]


def test_an_mlflow_model_of_another_flavor_is_refused(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text(yaml.safe_dump({"flavors": {"pytorch": {}, "python_function": {}}}))
    (tmp_path / "data.pth").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"no sklearn flavor \(flavors: .*pytorch"):
        load(tmp_path)


def _corrupt_tree(tree: Any, field: str, node: int, value: int) -> None:
    state = tree.__getstate__()
    nodes = state["nodes"].copy()
    nodes[field][node] = value
    state["nodes"] = nodes
    tree.__setstate__(state)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("left_child", 10**6, "left child 1000000"),
        ("right_child", 0, "right child 0"),
        ("feature", 99, "feature 99 of a model with 4"),
        ("left_child", -1, "exactly one child"),
    ],
)
@pytest.mark.parametrize("ensemble", [False, True])
def test_a_skops_tree_with_out_of_range_indices_is_refused_at_load(
    tmp_path: Path, field: str, value: int, message: str, ensemble: bool
) -> None:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    features, labels = load_iris(return_X_y=True)
    model: Any = (
        RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0)
        if ensemble
        else DecisionTreeClassifier(max_depth=3, random_state=0)
    ).fit(features, labels)
    tree = model.estimators_[-1].tree_ if ensemble else model.tree_
    _corrupt_tree(tree, field, 0, value)
    skops.io.dump(model, tmp_path / "model.skops")
    with pytest.raises(ArtifactError, match=f"corrupt decision tree: .*{message}"):
        load_artifact(tmp_path, ModelFormat.AUTO, None, False, VersionMismatchPolicy.REFUSE)


def test_a_sound_forest_passes_the_tree_check(tmp_path: Path) -> None:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    features, labels = load_iris(return_X_y=True)
    skops.io.dump(
        RandomForestClassifier(n_estimators=3, random_state=0).fit(features, labels), tmp_path / "m.skops"
    )
    loaded = load_artifact(tmp_path, ModelFormat.AUTO, None, False, VersionMismatchPolicy.REFUSE)
    assert loaded.format == "skops"


@pytest.mark.parametrize("spelling", ["absolute", "../model.skops", "sub/../../model.skops"])
def test_an_mlflow_model_file_outside_the_directory_is_refused(
    tmp_path: Path, iris_classifier: Any, spelling: str
) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    # The escaping file exists and is a loadable model, so only the path check can refuse it.
    outside = tmp_path / "model.skops"
    skops.io.dump(iris_classifier, outside)
    pickled_model = str(outside) if spelling == "absolute" else spelling
    flavor = {"pickled_model": pickled_model, "serialization_format": "skops"}
    (directory / "MLmodel").write_text(yaml.safe_dump({"flavors": {"sklearn": flavor}}))
    (directory / "requirements.txt").write_text("scikit-learn\n")
    with pytest.raises(ArtifactError, match="points outside the model directory"):
        load(directory)
