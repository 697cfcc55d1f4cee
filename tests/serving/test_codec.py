"""The tensor codec: every datatype, both data layouts, and each way input can be wrong."""

import tracemalloc
from typing import Any

import numpy as np
import pytest

from modeldeploy_serving import codec
from modeldeploy_serving.errors import InvalidInput


@pytest.mark.parametrize(
    ("datatype", "data", "expected_dtype"),
    [
        ("BOOL", [True, False], np.bool_),
        ("UINT8", [0, 255], np.uint8),
        ("UINT16", [0, 65535], np.uint16),
        ("UINT32", [0, 2**32 - 1], np.uint32),
        ("UINT64", [0, 2**63 - 1], np.uint64),
        ("INT8", [-128, 127], np.int8),
        ("INT16", [-(2**15), 2**15 - 1], np.int16),
        ("INT32", [-(2**31), 2**31 - 1], np.int32),
        ("INT64", [-(2**63), 2**63 - 1], np.int64),
        ("FP16", [0.5, -1.0], np.float16),
        ("FP32", [0.5, -1.0], np.float32),
        ("FP64", [0.5, -1.0], np.float64),
        ("FP64", [1, 2], np.float64),
        ("BYTES", ["a", "b"], object),
    ],
)
def test_decodes_every_datatype(datatype: str, data: list[Any], expected_dtype: Any) -> None:
    array = codec.decode_tensor("x", datatype, [2], data)
    assert array.dtype == np.dtype(expected_dtype)
    assert array.tolist() == data


def test_flat_and_nested_data_give_the_same_row_major_tensor() -> None:
    flat = codec.decode_tensor("x", "FP32", [2, 3], [1, 2, 3, 4, 5, 6])
    nested = codec.decode_tensor("x", "FP32", [2, 3], [[1, 2, 3], [4, 5, 6]])
    assert flat.shape == (2, 3)
    np.testing.assert_array_equal(flat, nested)
    assert flat[1].tolist() == [4, 5, 6]


@pytest.mark.parametrize(
    ("shape", "data", "message"),
    [
        ([2, 2], [1, 2, 3], "needs 4 elements"),
        ([3], [[1, 2], [3, 4]], "declared shape [3]"),
        ([2, 2], [[1, 2], [3]], "ragged"),
        ([2], [[1, 2]], "needs 2 elements"),
    ],
)
def test_data_that_does_not_fit_the_shape_is_a_client_error(
    shape: list[int], data: list[Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match="input 'x'") as raised:
        codec.decode_tensor("x", "FP64", shape, data)
    assert message in str(raised.value)


def test_a_nested_tensor_of_another_shape_with_the_same_size_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"shape \[3, 2\]"):
        codec.decode_tensor("x", "FP64", [2, 3], [[1, 2], [3, 4], [5, 6]])


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("FP64", ["a", "b"], "needs numeric values, got string"),
        ("FP64", [True, False], "needs numeric values, got boolean"),
        ("FP64", [1, None], "got mixed, null or too large"),
        ("INT32", [1.5, 2.0], "needs integer values, got numeric"),
        ("BOOL", [1, 0], "needs boolean values, got integer"),
        ("BYTES", [1, 2], "needs string values"),
        ("INT8", [128], "out of range for INT8"),
        ("UINT8", [-1], "out of range for UINT8"),
        ("FP16", [1e6], "out of range for FP16"),
        ("UINT64", [2**70], "out of range for UINT64"),
        ("INT64", [2**63], "out of range for INT64"),
        ("FP64", [10**400], "out of range for FP64"),
        ("FP64", [1.0] * 1000 + ["x" * 10_000], "needs numeric values, got string"),
        ("COMPLEX", [1], "unknown datatype 'COMPLEX'"),
    ],
)
def test_values_of_the_wrong_kind_are_a_client_error(datatype: str, data: list[Any], message: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        codec.decode_tensor("x", datatype, [len(data)], data)
    assert message in str(raised.value)


def test_negative_dimensions_and_non_array_data_are_refused() -> None:
    with pytest.raises(InvalidInput, match="negative dimension"):
        codec.decode_tensor("x", "FP64", [-1, 2], [1, 2])
    with pytest.raises(InvalidInput, match="must be a JSON array"):
        codec.decode_tensor("x", "FP64", [1], 3)


def test_an_empty_tensor_decodes_to_its_shape() -> None:
    assert codec.decode_tensor("x", "FP64", [0, 4], []).shape == (0, 4)


@pytest.mark.parametrize(
    ("array", "datatype"),
    [
        (np.array([True]), "BOOL"),
        (np.array([1], dtype=np.uint8), "UINT8"),
        (np.array([1], dtype=np.int32), "INT32"),
        (np.array([1], dtype=np.int64), "INT64"),
        (np.array([1.0], dtype=np.float32), "FP32"),
        (np.array([1.0]), "FP64"),
        (np.array(["setosa"]), "BYTES"),
        (np.array(["setosa"], dtype=object), "BYTES"),
    ],
)
def test_datatype_of_arrays(array: np.ndarray, datatype: str) -> None:
    assert codec.datatype_of(array) == datatype


def test_datatype_of_an_unrepresentable_array_is_an_error() -> None:
    with pytest.raises(ValueError, match="complex"):
        codec.datatype_of(np.array([1j]))


def test_encode_tensor_flattens_row_major_and_keeps_the_shape() -> None:
    encoded = codec.encode_tensor("predict_proba", np.array([[0.25, 0.75], [1.0, 0.0]]))
    assert encoded == {
        "name": "predict_proba",
        "shape": [2, 2],
        "datatype": "FP64",
        "data": [0.25, 0.75, 1.0, 0.0],
    }


def test_encode_tensor_turns_labels_into_strings() -> None:
    encoded = codec.encode_tensor("predict", np.array(["setosa", "virginica"], dtype=object))
    assert encoded["datatype"] == "BYTES"
    assert encoded["data"] == ["setosa", "virginica"]


def test_json_values_keep_numbers_and_stringify_labels() -> None:
    assert codec.json_values(np.array([1, 2])) == [1, 2]
    assert codec.json_values(np.array(["a"], dtype=object)) == ["a"]
    assert codec.json_values(np.array([], dtype=object)) == []


def test_rows_from_columns_stacks_one_feature_per_input() -> None:
    rows = codec.rows_from_columns([("a", np.array([1.0, 2.0])), ("b", np.array([[3.0], [4.0]]))])
    assert rows.tolist() == [[1.0, 3.0], [2.0, 4.0]]


def test_rows_from_columns_with_mixed_kinds_keeps_each_value() -> None:
    rows = codec.rows_from_columns([("a", np.array([1.0])), ("b", np.array(["x"], dtype=object))])
    assert rows.tolist() == [[1.0, "x"]]


def test_rows_from_columns_refuses_matrices_and_unequal_lengths() -> None:
    with pytest.raises(InvalidInput, match="input 'a'"):
        codec.rows_from_columns([("a", np.ones((2, 2))), ("b", np.ones(2))])
    with pytest.raises(InvalidInput, match=r"different numbers of rows: \[1, 2\]"):
        codec.rows_from_columns([("a", np.ones(1)), ("b", np.ones(2))])


def test_rows_from_instances() -> None:
    assert codec.rows_from_instances([[1, 2], [3, 4]], None).tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    ("instances", "message"),
    [
        ([], "non-empty"),
        ({"a": 1}, "non-empty"),
        ([1, 2], "each instance must be a JSON array"),
        ([[1, 2], [3]], r"different numbers of features: \[1, 2\]"),
        ([[1, [2]]], "not a matrix"),
        ([[1, None]], "may only hold numbers"),
        ([[{"a": 1}]], "may only hold numbers"),
    ],
)
def test_bad_instances_are_a_client_error(instances: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        codec.rows_from_instances(instances, None)


def test_non_finite_outputs_are_refused_because_json_cannot_carry_them() -> None:
    with pytest.raises(InvalidInput, match="output 'predict' is not finite"):
        codec.encode_tensor("predict", np.array([1.0, np.inf]))
    with pytest.raises(InvalidInput, match="not finite"):
        codec.json_values(np.array([np.nan]))


def test_instances_as_objects_are_ordered_by_the_models_feature_names() -> None:
    rows = codec.rows_from_instances([{"b": 2.0, "a": 1.0}, {"a": 3.0, "b": 4.0}], ["a", "b"])
    assert rows.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_mixed_rows_keep_numbers_as_numbers() -> None:
    rows = codec.rows_from_instances([[30.0, "rome"]], None)
    assert rows.tolist() == [[30.0, "rome"]]


@pytest.mark.parametrize(
    ("instances", "names", "message"),
    [
        ([{"a": 1.0}], None, "need a model that knows its feature names"),
        ([{"a": 1.0}], ["a", "b"], r"missing \['b'\], unknown none"),
        ([{"a": 1.0, "c": 2.0}], ["a"], r"missing none, unknown \['c'\]"),
    ],
)
def test_instances_as_objects_must_match_the_feature_names(
    instances: list[Any], names: list[str] | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        codec.rows_from_instances(instances, names)


def test_named_columns_become_rows() -> None:
    rows = codec.rows_from_named_columns({"b": [2.0, 4.0], "a": [1.0, 3.0]}, ["a", "b"])
    assert rows.tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"a": [1.0], "b": [1.0, 2.0]}, r"different numbers of rows: \[1, 2\]"),
        ({"a": 1.0, "b": [1.0]}, "one value per row"),
        ({"a": [1.0]}, r"missing \['b'\]"),
    ],
)
def test_bad_named_columns_are_a_client_error(columns: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        codec.rows_from_named_columns(columns, ["a", "b"])


def binary_header(*inputs: tuple[str, str, list[int], int]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}
            for name, datatype, shape, size in inputs
        ]
    }


def test_binary_tensors_are_decoded_straight_into_arrays() -> None:
    floats = np.array([1.5, -2.0], dtype="<f4").tobytes()
    ints = np.array([7], dtype="<i8").tobytes()
    text = len(b"rome").to_bytes(4, "little") + b"rome" + len(b"").to_bytes(4, "little")
    header = binary_header(
        ("a", "FP32", [2], len(floats)), ("b", "INT64", [1], len(ints)), ("c", "BYTES", [2], len(text))
    )
    header["inputs"].insert(1, {"name": "json", "datatype": "FP64", "shape": [1], "data": [3.0]})
    inlined = codec.inline_binary_tensors(header, floats + ints + text)
    data = [item["data"] for item in inlined["inputs"]]
    assert [np.asarray(item).tolist() for item in data] == [[1.5, -2.0], [3.0], [7], ["rome", ""]]
    # Numeric tensors are arrays of their datatype (no Python object per element), writable
    # and in native byte order; BYTES stay a list of str.
    assert (data[0].dtype, data[2].dtype) == (np.dtype(np.float32), np.dtype(np.int64))
    assert data[0].flags.writeable and data[0].dtype.isnative
    tensor = codec.decode_tensor("a", "FP32", [2, 1], data[0])
    assert tensor.shape == (2, 1) and tensor.dtype == np.float32
    with pytest.raises(InvalidInput, match="holds 2 elements but the declared shape"):
        codec.decode_tensor("a", "FP32", [3], data[0])


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[0.5, 0.25]]), np.array([0.5, 0.25], dtype="<f8").tobytes()),
        (np.array([1, 2], dtype=np.int64), np.array([1, 2], dtype="<i8").tobytes()),
        (np.array([True, False]), b"\x01\x00"),
        (np.array(["rome", ""], dtype=object), b"\x04\x00\x00\x00rome\x00\x00\x00\x00"),
    ],
)
def test_binary_outputs_are_little_endian_row_major_and_length_prefixed_bytes(
    array: Any, expected: bytes
) -> None:
    tensor, data = codec.binary_output("out", array)
    assert data == expected
    assert tensor == {
        "name": "out",
        "shape": list(array.shape),
        "datatype": codec.datatype_of(array),
        "parameters": {"binary_data_size": len(expected)},
    }
    # What a binary request of the same tensor decodes to is the array itself.
    header = binary_header(("x", tensor["datatype"], tensor["shape"], len(data)))
    decoded = codec.inline_binary_tensors(header, data)["inputs"][0]["data"]
    assert np.asarray(decoded).reshape(array.shape).tolist() == array.tolist()


@pytest.mark.parametrize(
    ("header", "blob", "message"),
    [
        ([], b"", "must be an object with 'inputs'"),
        (binary_header(("a", "FP32", [1], 8)), b"1234", "does not fit the body"),
        (binary_header(("a", "FP32", [1], 4)), b"12345678", "4 bytes that no input"),
        (binary_header(("a", "FP32", [1], 3)), b"123", "not whole FP32 elements"),
        (binary_header(("a", "FP64", [1], 8)), np.array([np.nan]).tobytes(), "NaN or infinity"),
        (binary_header(("a", "BYTES", [1], 2)), b"\x05\x00", "truncated BYTES element length"),
        (binary_header(("a", "BYTES", [1], 5)), b"\x05\x00\x00\x00a", "truncated BYTES element"),
        (binary_header(("a", "BYTES", [1], 5)), b"\x01\x00\x00\x00\xff", "not UTF-8"),
        (binary_header(("a", "COMPLEX", [1], 1)), b"1", "unknown datatype"),
        (binary_header(("a", "FP32", [1], -1)), b"", "does not fit the body"),
        (binary_header(("a", "BOOL", [1], 1)), b"\x02", "other than 0 and 1"),
    ],
)
def test_malformed_binary_requests_are_client_errors(header: Any, blob: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        codec.inline_binary_tensors(header, blob)


def test_v1_rows_mixing_a_long_string_with_many_numbers_stay_objects_of_bounded_size() -> None:
    # numpy would infer a fixed-width unicode array: 10,000 elements as wide as the string
    # (10,000 characters, 4 bytes each) is 400 MB; as objects it is well under a megabyte.
    instances = [[float(index), 1.0] for index in range(5_000)] + [["x" * 10_000, 2.0]]
    tracemalloc.start()
    try:
        rows = codec.rows_from_instances(instances, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows.dtype == object and rows.shape == (5_001, 2)
    assert rows[-1, 0] == "x" * 10_000 and rows[0, 0] == 0.0
    assert peak < 5_000_000


def test_v2_numbers_mixed_with_a_long_string_are_refused_before_any_array_is_built() -> None:
    data: list[Any] = [1.0] * 10_000 + ["x" * 10_000]
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match="needs numeric values, got string"):
            codec.decode_tensor("x", "FP64", [len(data)], data)
        with pytest.raises(InvalidInput, match="BYTES needs string values"):
            codec.decode_tensor("x", "BYTES", [len(data)], data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


def test_bytes_tensors_are_object_arrays_not_fixed_width_unicode() -> None:
    array = codec.decode_tensor("x", "BYTES", [2, 2], [["a", "b" * 1000], ["c", "d"]])
    assert array.dtype == object and array.tolist() == [["a", "b" * 1000], ["c", "d"]]


@pytest.mark.parametrize(
    ("shape", "message"),
    [([1] * 65, "65 dimensions"), ([2**62, 2**62, 0], "too large"), ([2**31, 2**31, 0], "too large")],
)
def test_shapes_no_array_can_have_are_a_client_error(shape: list[int], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        codec.decode_tensor("x", "FP64", shape, [])


def test_data_nested_deeper_than_numpy_allows_is_a_client_error() -> None:
    data: list[Any] = [1.0]
    for _ in range(70):
        data = [data]
    with pytest.raises(InvalidInput, match="nested deeper"):
        codec.decode_tensor("x", "FP64", [1], data)


def test_an_empty_shape_with_a_zero_dimension_still_decodes() -> None:
    assert codec.decode_tensor("x", "FP64", [3, 0], []).shape == (3, 0)


@pytest.mark.parametrize(
    ("datatype", "value"), [("UINT64", 2**64 - 1), ("INT64", -(2**63)), ("INT64", 2**63 - 1)]
)
def test_the_extremes_of_64_bit_integers_are_accepted(datatype: str, value: int) -> None:
    assert codec.decode_tensor("x", datatype, [2], [0, value]).tolist() == [0, value]


def test_v1_agrees_with_v2_on_big_integers() -> None:
    assert codec.rows_from_instances([[0, 2**64 - 1]], None).tolist() == [[0, 2**64 - 1]]
    assert codec.rows_from_instances([[-(2**63), 1]], None).tolist() == [[-(2**63), 1]]
    for instances in ([[2**64]], [[-1, 2**63]], [[-(2**63) - 1]]):
        with pytest.raises(InvalidInput, match="64-bit range"):
            codec.rows_from_instances(instances, None)
        with pytest.raises(InvalidInput, match="out of range"):
            datatype = "INT64" if min(instances[0]) < 0 else "UINT64"
            codec.decode_tensor("x", datatype, [len(instances[0])], instances[0])
