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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


def _largest_step(monkeypatch: pytest.MonkeyPatch, body: bytes) -> tuple[int, Any]:
    """The most JSON text one orjson call parses in `piecewise_json.loads(body)`, and its result
    (or its error)."""
    sizes: list[int] = []
    loads = orjson.loads

    def measured_loads(text: bytes) -> Any:
        sizes.append(len(text))
        return loads(text)

    monkeypatch.setattr(piecewise_json.orjson, "loads", measured_loads)
    try:
        result: Any = piecewise_json.loads(body)
    except orjson.JSONDecodeError as error:
        result = (error.msg, error.pos)
    monkeypatch.undo()
    return max(sizes), result


def _tensor_body(data: list[Any], extra: bytes = b"") -> bytes:
    head = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": '
    return head + orjson.dumps(data) + b"}]" + extra + b"}"


# About 3 MB each: over the size up to which a malformed body is parsed again whole.
_STRINGS = ["ab", 'a\\"b,]', "[{,}]", "\u00e9\u2202"] * 100_000
_LARGE = {
    "strings with escapes": _tensor_body(_STRINGS),
    "numbers and a backslash elsewhere": _tensor_body([1.5, 2] * 500_000, b', "id": "a\\\\b"'),
    "long strings": _tensor_body(["x" * 4000] * 800),
    "malformed late": _tensor_body([1.5, 2] * 500_000).replace(b"2]}", b"2,]}"),
    "malformed strings": b'"ab" 1'.join(_tensor_body(_STRINGS).rsplit(b'"ab"', 1)),
    "unclosed": _tensor_body(_STRINGS)[:-1],
}


@pytest.mark.parametrize("name", list(_LARGE))
def test_bodies_with_strings_escapes_or_errors_are_parsed_in_pieces(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, any body with a backslash, with strings in its arrays or malformed was parsed
    whole, in one call that held the GIL (and the event loop) for up to 150 ms per 16 MiB."""
    body = _LARGE[name]
    assert len(body) > piecewise_json.EXACT_ERRORS_BYTES
    largest, result = _largest_step(monkeypatch, body)
    try:
        expected: Any = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        expected = (error.msg, error.pos)
    assert result == expected
    assert largest <= 2 * piecewise_json.PIECE_BYTES + 2, largest


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


_TRICKY_TEXT = st.text(alphabet='ab,[]{}:"\\\u00e9 \n', max_size=6)
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TRICKY_TEXT,
    lambda children: st.lists(children, max_size=12) | st.dictionaries(_TRICKY_TEXT, children, max_size=4),
    max_leaves=60,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=_JSON_VALUES,
    cut=st.integers(0, 10_000),
    insert=st.sampled_from(["", ",", '"', "\\", "]", "[", "x"]),
)
def test_any_body_parses_as_orjson_parses_it_with_tiny_pieces(
    value: Any, cut: int, insert: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pieces of 8 bytes make every array of a small document long: any value, with strings full of
    quotes, escapes, brackets and commas, or one character added or removed somewhere, parses as
    orjson parses it, and a malformed one fails where orjson fails."""
    monkeypatch.setattr(piecewise_json, "PIECE_BYTES", 8)
    text = json.dumps(value, ensure_ascii=False).encode()
    position = cut % (len(text) + 1)
    body = text[:position] + insert.encode() + text[position + (0 if insert else 1) :]
    for exact_errors in (10**9, 0):
        monkeypatch.setattr(piecewise_json, "EXACT_ERRORS_BYTES", exact_errors)
        try:
            expected: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            with pytest.raises(orjson.JSONDecodeError):
                piecewise_json.loads(body)
        else:
            assert piecewise_json.loads(body) == expected
