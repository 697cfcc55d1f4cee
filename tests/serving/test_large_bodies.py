"""Large bodies parsed and encoded in pieces, the extensions the server lists, and outputs that
JSON cannot carry."""

import gc
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from serving_helpers import make_settings, v2_tensor

from modeldeploy_serving import piecewise_json
from modeldeploy_serving.app import create_app
from modeldeploy_serving.dataplane import DataPlane
from modeldeploy_serving.model import SklearnModel

ROWS = 40_000  # about 1 MB of JSON numbers: several pieces


def _bodies() -> dict[str, Any]:
    return {
        "flat V2 data": {
            "id": "a",
            "inputs": [
                {"name": "x", "shape": [ROWS, 4], "datatype": "FP64", "data": [5.1, 3.5, 1, 2e-3] * ROWS}
            ],
        },
        "nested V2 data": {"inputs": [{"name": "x", "data": [[5.1, -3, True, None]] * ROWS}]},
        "V1 instances": {"instances": [[5.1, 3.5, 1.4, 0.2]] * ROWS},
        "two long arrays": {"inputs": [{"data": list(range(4 * ROWS))}, {"data": [False, 2.5] * ROWS}]},
        "strings among numbers": {"inputs": [{"data": ["a,b]", 1.5] * ROWS}]},
        "a top-level array": [1.5, [2, 3]] * ROWS,
    }


@pytest.mark.parametrize("name", list(_bodies()))
def test_large_bodies_parse_as_orjson_parses_them(name: str) -> None:
    body = json.dumps(_bodies()[name]).encode()
    assert piecewise_json.loads(body) == orjson.loads(body)


def test_no_single_step_parses_more_than_about_two_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each orjson call holds the GIL throughout; the event loop waits for the longest."""
    sizes: list[int] = []
    loads = orjson.loads

    def measured_loads(text: bytes) -> Any:
        sizes.append(len(text))
        return loads(text)

    body = json.dumps(_bodies()["flat V2 data"]).encode()
    monkeypatch.setattr(piecewise_json.orjson, "loads", measured_loads)
    assert piecewise_json.loads(body)["id"] == "a"
    assert len(sizes) > 3
    assert max(sizes) <= 2 * piecewise_json.PIECE_BYTES + 2, sizes


def _error(parse: Any, body: bytes) -> str:
    with pytest.raises(orjson.JSONDecodeError) as error:
        parse(body)
    return str(error.value)


_NUMBERS = b"1.5, " * 200_000 + b"1"


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": [' + _NUMBERS.replace(b", ", b",, ", 1) + b"]}",
        b'{"data": [,' + _NUMBERS + b"]}",
        b'{"data": [' + _NUMBERS + b",]}",
        b'{"data": [' + _NUMBERS.replace(b"1.5", b"1..5", 1) + b"]}",
        b'{"data": [' + _NUMBERS + b"]",
        b"{[" + _NUMBERS + b"]: 1}",
    ],
    ids=["double comma", "leading comma", "trailing comma", "bad number", "unclosed", "array as key"],
)
def test_malformed_large_bodies_get_orjsons_own_error(body: bytes) -> None:
    assert _error(piecewise_json.loads, body) == _error(orjson.loads, body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": [' + _NUMBERS + b'], "data": 3}',
        b'{"data": "[' + _NUMBERS + b']"}',
        b'{"id": "\\u0000array-0", "data": [' + _NUMBERS + b"]}",
    ],
    ids=["duplicate key", "inside a string", "a string like a placeholder"],
)
def test_tricky_large_bodies_parse_as_orjson_parses_them(body: bytes) -> None:
    assert piecewise_json.loads(body) == orjson.loads(body)


def test_large_answers_encode_as_orjson_encodes_them_and_are_released_in_pieces() -> None:
    answer = {
        "id": "\x00 not a placeholder",
        "outputs": [{"name": "p", "data": list(range(200_000))}, {"name": "q", "data": [[0.5, 1]] * 70_000}],
    }
    assert piecewise_json.dumps(answer) == orjson.dumps(answer)
    piecewise_json.release(answer)
    assert answer["outputs"] == [{"name": "p", "data": []}, {"name": "q", "data": []}]


# --- extensions and outputs JSON cannot carry ------------------------------------------------


@pytest.fixture
def diabetes_client(tmp_path: Path, diabetes_regressor: Any) -> Any:
    settings = make_settings(tmp_path, model_name="diabetes")
    plane = DataPlane(settings)
    plane.serve_model(SklearnModel(diabetes_regressor))
    with TestClient(create_app(settings, data_plane=plane, load_model=False)) as client:
        yield client


# Inputs that drive the linear model to infinity and NaN (inf - inf).
_EXTREME = [[1e308] * 10, [-1e308] * 10]


def test_the_server_lists_the_binary_extension_and_implements_it(diabetes_client: TestClient) -> None:
    assert diabetes_client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    blob = np.zeros((2, 10), dtype="<f8").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 10],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    reply = diabetes_client.post(
        "/v2/models/diabetes/infer",
        content=header + blob,
        headers={"inference-header-content-length": str(len(header))},
    )
    assert reply.status_code == 200, reply.text
    split = int(reply.headers["inference-header-content-length"])
    (output,) = orjson.loads(reply.content[:split])["outputs"]
    assert output["parameters"]["binary_data_size"] == 16
    assert np.frombuffer(reply.content[split:], dtype="<f8").shape == (2,)


def test_non_finite_outputs_go_as_binary_and_are_a_clear_client_error_in_json(
    diabetes_client: TestClient,
) -> None:
    path = "/v2/models/diabetes/infer"
    as_json = diabetes_client.post(path, json={"inputs": [v2_tensor(_EXTREME)]})
    assert as_json.status_code == 400
    assert "not finite" in as_json.json()["error"]
    assert "request it as binary data" in as_json.json()["error"]
    v1 = diabetes_client.post("/v1/models/diabetes:predict", json={"instances": _EXTREME})
    assert v1.status_code == 400
    assert "JSON cannot carry it" in v1.json()["error"]

    as_binary = diabetes_client.post(
        path,
        json={
            "inputs": [v2_tensor(_EXTREME)],
            "outputs": [{"name": "predict", "parameters": {"binary_data": True}}],
        },
    )
    assert as_binary.status_code == 200, as_binary.text
    split = int(as_binary.headers["inference-header-content-length"])
    values = np.frombuffer(as_binary.content[split:], dtype="<f8")
    assert values.size == 2
    assert not np.isfinite(values).any()


def test_loading_freezes_the_objects_that_live_as_long_as_the_process(iris_skops_dir: Path) -> None:
    """So that the full collections large bodies set off do not walk them holding the GIL."""
    gc.unfreeze()
    try:
        DataPlane(make_settings(iris_skops_dir)).load()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
