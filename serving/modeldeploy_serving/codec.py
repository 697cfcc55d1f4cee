"""Conversion between protocol tensors (JSON) and numpy arrays, with the validation that keeps
bad input a client error. Pure functions: no HTTP, no model."""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_serving.errors import InvalidInput

# The Open Inference Protocol's tensor datatypes and the numpy dtypes that hold them.
V2_DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

# Which kinds of JSON values (as numpy infers them) each datatype accepts. Integers are fine for
# floating-point tensors; floats are not silently truncated into integer tensors.
_ACCEPTED_KINDS = {
    "b": {"b"},
    "u": {"u", "i"},
    "i": {"u", "i"},
    "f": {"u", "i", "f"},
}


# numpy's limit on dimensions; a deeper shape or nesting is a client error, not a crash.
MAX_DIMENSIONS = 32
# The product of a shape's non-zero dimensions must stay well inside numpy's index type, or
# numpy refuses to build even an empty array of that shape.
_MAX_SHAPE_PRODUCT = 2**62


def check_shape(name: str, shape: Sequence[int]) -> int:
    """The number of elements of `shape`, or InvalidInput for a shape no array can have."""
    if len(shape) > MAX_DIMENSIONS:
        raise InvalidInput(f"input '{name}': shape has {len(shape)} dimensions; at most {MAX_DIMENSIONS}")
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
    if math.prod(dim for dim in shape if dim) >= _MAX_SHAPE_PRODUCT:
        raise InvalidInput(f"input '{name}': shape {list(shape)} is too large")
    return math.prod(shape)


def decode_tensor(name: str, datatype: str, shape: Sequence[int], data: Any) -> npt.NDArray[Any]:
    """Turn one V2 request tensor into an array of `shape` and `datatype`.

    `data` may be nested in the tensor's natural shape or flattened in row-major order.
    """
    dtype = V2_DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(
            f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(V2_DATATYPES)}"
        )
    expected_size = check_shape(name, shape)
    if isinstance(data, np.ndarray):
        # Decoded from the binary tensor data extension: already an array of the datatype.
        if data.size != expected_size:
            raise InvalidInput(
                f"input '{name}': binary data holds {data.size} elements "
                f"but the declared shape {list(shape)} needs {expected_size}"
            )
        return data.reshape(tuple(shape))
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': data must be a JSON array")
    data_shape, flat, types = flatten(name, data)
    if tuple(data_shape) != tuple(shape) and (len(data_shape) != 1 or len(flat) != expected_size):
        raise InvalidInput(
            f"input '{name}': data has shape {data_shape} ({len(flat)} elements) "
            f"but the declared shape {list(shape)} needs {expected_size} elements"
        )
    if datatype == "BYTES":
        array = _bytes_array(name, flat)
    else:
        array = _numeric_array(name, datatype, dtype, flat, types)
    return array.reshape(tuple(shape))


def flatten(name: str, data: list[Any]) -> tuple[list[int], list[Any], set[type]]:
    """The shape of nested lists, their leaves in row-major order and the leaves' exact types;
    InvalidInput if ragged.

    Walking the lists ourselves (instead of letting numpy infer a dtype) keeps memory bounded:
    numpy turns one long string among many numbers into a fixed-width unicode array whose every
    element is as wide as the longest one.
    """
    shape: list[int] = []
    level: list[Any] = data
    while True:
        shape.append(len(level))
        if len(shape) > MAX_DIMENSIONS:
            raise InvalidInput(f"input '{name}': data is nested deeper than {MAX_DIMENSIONS} levels")
        if not level or not isinstance(level[0], list):
            break
        level = level[0]
    flat: list[Any] = data
    for depth in range(1, len(shape)):
        width = shape[depth]
        next_flat: list[Any] = []
        for item in flat:
            if not isinstance(item, list) or len(item) != width:
                raise InvalidInput(f"input '{name}': data is ragged (nested lists of different lengths)")
            next_flat.extend(item)
        flat = next_flat
    types = _types_in(flat)
    if not types.isdisjoint((list, dict)):
        raise InvalidInput(f"input '{name}': data is ragged (nested lists of different lengths)")
    return shape, flat, types


def _numeric_array(
    name: str, datatype: str, dtype: np.dtype[Any], flat: list[Any], types: set[type]
) -> npt.NDArray[Any]:
    """`flat` as an array of `dtype`; `types` are its values' exact types (`_types_in`)."""
    if dtype.kind == "b":
        _require_kinds(name, datatype, flat, types, (bool,))
        return array_in_pieces(flat, dtype)
    if dtype.kind in "ui":
        _require_kinds(name, datatype, flat, types, (int,))
        limits = np.iinfo(dtype)
        smallest, largest = _value_range(flat)
        if flat and (smallest < limits.min or largest > limits.max):
            raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
        return array_in_pieces(flat, dtype)
    _require_kinds(name, datatype, flat, types, (int, float))
    try:
        wide = array_in_pieces(flat, np.dtype(np.float64))
    except OverflowError:
        raise InvalidInput(f"input '{name}': a value is out of range for {datatype}") from None
    if dtype.itemsize < 8:
        finite = wide[np.isfinite(wide)]
        if finite.size and float(np.abs(finite).max()) > float(np.finfo(dtype).max):
            raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
    return wide.astype(dtype)


# How many elements one step of a conversion between lists and arrays handles: about a
# millisecond, so that converting a large tensor never keeps other threads (the event loop
# answering health checks) from the GIL for long.
PIECE_ELEMENTS = 65_536


def array_in_pieces(flat: list[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """`np.array(flat, dtype)` of a flat list, converted a piece at a time."""
    array = np.empty(len(flat), dtype=dtype)
    for start in range(0, len(flat), PIECE_ELEMENTS):
        array[start : start + PIECE_ELEMENTS] = flat[start : start + PIECE_ELEMENTS]
    return array


def list_in_pieces(array: npt.NDArray[Any]) -> list[Any]:
    """`array.reshape(-1).tolist()`, converted a piece at a time."""
    flat = array.reshape(-1)
    values: list[Any] = []
    for start in range(0, flat.size, PIECE_ELEMENTS):
        values += flat[start : start + PIECE_ELEMENTS].tolist()
    return values


def _types_in(flat: list[Any]) -> set[type]:
    """The exact types of the values in `flat`, gathered a piece at a time (in C: a Python loop
    over millions of values would compete for the GIL ten times as long)."""
    types: set[type] = set()
    for start in range(0, len(flat), PIECE_ELEMENTS):
        types.update(map(type, flat[start : start + PIECE_ELEMENTS]))
    return types


def _value_range(flat: list[Any]) -> tuple[Any, Any]:
    """The smallest and largest of `flat`'s values, found a piece at a time; (0, 0) if it is empty."""
    pieces = [flat[start : start + PIECE_ELEMENTS] for start in range(0, len(flat), PIECE_ELEMENTS)]
    if not pieces:
        return 0, 0
    return min(min(piece) for piece in pieces), max(max(piece) for piece in pieces)


def _require_kinds(
    name: str, datatype: str, flat: list[Any], types: set[type], kinds: tuple[type, ...]
) -> None:
    """InvalidInput naming the first value whose exact type is not one of `kinds` (bool is
    not taken for an integer, nor a number for a boolean); `types` are the values' exact types."""
    if types.issubset(kinds):
        return
    for item in flat:
        if type(item) not in kinds:
            needed = "numeric" if float in kinds else _describe_value(kinds[0]())
            raise InvalidInput(
                f"input '{name}': datatype {datatype} needs {needed} values, got {_describe_value(item)}"
            )


def _describe_value(value: Any) -> str:
    kinds = {bool: "boolean", int: "integer", float: "numeric", str: "string"}
    return kinds.get(type(value), "mixed, null or too large")


def _bytes_array(name: str, flat: list[Any]) -> npt.NDArray[Any]:
    if not all(isinstance(item, str) for item in flat):
        raise InvalidInput(f"input '{name}': datatype BYTES needs string values")
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array


def inline_binary_tensors(header: Any, blob: bytes) -> Any:
    """A request of the binary tensor data extension with each binary input's data decoded:
    a numpy array of the datatype (no Python object per element), or a list of str for BYTES.

    Inputs whose `parameters.binary_data_size` is set take that many bytes of `blob`, in order:
    little-endian elements, or for BYTES a 4-byte little-endian length before each element.
    """
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput("the JSON header of a binary request must be an object with 'inputs'")
    offset = 0
    for item in header["inputs"]:
        parameters = item.get("parameters") if isinstance(item, dict) else None
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(blob):
            raise InvalidInput(f"input '{item.get('name')}': binary_data_size {size!r} does not fit the body")
        item["data"] = _decode_binary(
            str(item.get("name")), item.get("datatype"), blob[offset : offset + size]
        )
        offset += size
    if offset != len(blob):
        raise InvalidInput(
            f"the body holds {len(blob) - offset} bytes that no input's binary_data_size claims"
        )
    return header


def _decode_binary(name: str, datatype: Any, chunk: bytes) -> npt.NDArray[Any] | list[str]:
    if datatype == "BYTES":
        values, offset = [], 0
        while offset < len(chunk):
            if offset + 4 > len(chunk):
                raise InvalidInput(f"input '{name}': truncated BYTES element length")
            length = int.from_bytes(chunk[offset : offset + 4], "little")
            element = chunk[offset + 4 : offset + 4 + length]
            if len(element) != length:
                raise InvalidInput(f"input '{name}': truncated BYTES element")
            try:
                values.append(element.decode())
            except UnicodeDecodeError:
                raise InvalidInput(f"input '{name}': a BYTES element is not UTF-8 text") from None
            offset += 4 + length
        return values
    dtype = V2_DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(f"input '{name}': unknown datatype {datatype!r}")
    if len(chunk) % dtype.itemsize:
        raise InvalidInput(f"input '{name}': {len(chunk)} bytes are not whole {datatype} elements")
    values_array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<"))
    if dtype.kind == "f" and not np.isfinite(values_array).all():
        raise InvalidInput(f"input '{name}': binary data holds NaN or infinity")
    if dtype == np.bool_ and values_array.view(np.uint8).max(initial=0) > 1:
        raise InvalidInput(f"input '{name}': BOOL binary data holds a byte other than 0 and 1")
    # A writable array in native byte order, independent of the request body's buffer.
    return values_array.astype(dtype)


def binary_tensor(array: npt.NDArray[Any]) -> bytes:
    """`array`'s elements as the binary tensor data extension carries them: row-major,
    little-endian, BOOL as one byte each, BYTES as a 4-byte little-endian length before each
    UTF-8 element."""
    datatype = datatype_of(array)
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            encoded = item if isinstance(item, bytes) else str(item).encode()
            parts.append(len(encoded).to_bytes(4, "little"))
            parts.append(encoded)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def binary_output(name: str, array: npt.NDArray[Any]) -> tuple[dict[str, Any], bytes]:
    """A V2 response tensor sent as binary data: its JSON part (no `data`) and its bytes."""
    data = binary_tensor(array)
    tensor = {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype_of(array),
        "parameters": {"binary_data_size": len(data)},
    }
    return tensor, data


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The V2 datatype that represents `array`'s elements."""
    for datatype, dtype in V2_DATATYPES.items():
        if dtype == array.dtype and datatype != "BYTES":
            return datatype
    if array.dtype.kind in "USO":
        return "BYTES"
    raise ValueError(f"no V2 datatype for numpy dtype {array.dtype}")


def encode_tensor(name: str, array: npt.NDArray[Any]) -> dict[str, Any]:
    """A V2 response tensor: the array's shape, datatype and row-major flattened data."""
    datatype = datatype_of(array)
    _check_finite(name, array, "request it as binary data (parameters.binary_data) to receive it")
    data = [str(item) for item in array.reshape(-1)] if datatype == "BYTES" else list_in_pieces(array)
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def json_values(array: npt.NDArray[Any]) -> list[Any]:
    """The array as nested JSON-ready lists (strings for non-numeric elements)."""
    if array.dtype.kind in "USO" and array.size:
        array = np.vectorize(str, otypes=[object])(array)
    _check_finite("predictions", array, "check its values")
    if array.ndim == 1:
        return list_in_pieces(array)
    result: list[Any] = array.tolist()
    return result


def _check_finite(name: str, array: npt.NDArray[Any], advice: str) -> None:
    """JSON has no NaN or infinity; extreme inputs can drive a model there (1e308 into a linear model).

    A client error (400), not a server error: the model answered, but not in a form the request
    can carry; a 5xx would be retried in vain and count against the version in a rollout's
    analysis. Binary outputs carry NaN and infinity as they are.
    """
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(
            f"output '{name}' is not finite (NaN or infinity) for this input, and JSON cannot carry it; {advice}"
        )


def rows_from_columns(columns: Sequence[tuple[str, npt.NDArray[Any]]]) -> npt.NDArray[Any]:
    """Stack several 1-D (or [N, 1]) input tensors, one per feature, into an [N, F] matrix."""
    flattened = []
    for name, column in columns:
        if column.ndim == 2 and column.shape[1] == 1:
            column = column[:, 0]
        if column.ndim != 1:
            raise InvalidInput(
                f"input '{name}': with several inputs each must be one feature column of shape [N] "
                f"or [N, 1], got {list(column.shape)}"
            )
        flattened.append(column)
    lengths = {len(column) for column in flattened}
    if len(lengths) > 1:
        raise InvalidInput(f"inputs have different numbers of rows: {sorted(lengths)}")
    if len({column.dtype.kind for column in flattened}) > 1:
        return np.column_stack([column.astype(object) for column in flattened])
    return np.column_stack(flattened)


def rows_from_instances(instances: Any, feature_names: Sequence[str] | None) -> npt.NDArray[Any]:
    """The V1 `instances` as an [N, F] matrix.

    Rows are lists of feature values, or objects keyed by feature name (for models that know
    their feature names).
    """
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty JSON array of rows")
    if all(isinstance(row, dict) for row in instances):
        names = _require_names(feature_names, "instances given as objects")
        for row in instances:
            _check_names(set(row), names)
        instances = [[row[name] for name in names] for row in instances]
    if not all(isinstance(row, list) for row in instances):
        raise InvalidInput("each instance must be a JSON array of feature values (or an object of them)")
    widths = {len(row) for row in instances}
    if len(widths) > 1:
        raise InvalidInput(f"instances have different numbers of features: {sorted(widths)}")
    flat = [item for row in instances for item in row]
    if not all(_is_scalar(item) for item in flat):
        raise InvalidInput(
            "instances are not a matrix of scalar values: they may only hold numbers, booleans and strings"
        )
    if any(isinstance(item, str) for item in flat):
        # An object array keeps each value as it came; numpy would build a fixed-width unicode
        # array as wide as the longest string for every element (memory amplification).
        array = np.empty((len(instances), widths.pop()), dtype=object)
        array[:] = instances
        return array
    integers = [item for item in flat if type(item) is int]
    smallest, largest = _value_range(integers)
    if smallest < -(2**63) or largest > 2**64 - 1 or (largest > 2**63 - 1 and smallest < 0):
        raise InvalidInput("an integer is out of the 64-bit range (INT64, or UINT64 when none is negative)")
    if integers and len(integers) == len(flat):
        # Only integers: the same dtypes as V2's INT64 and UINT64 (numpy would pick float64 for
        # values beyond INT64 and lose their precision).
        return _rows_in_pieces(instances, np.dtype(np.uint64 if largest > 2**63 - 1 else np.int64))
    return _rows_in_pieces(instances, None)


def _rows_in_pieces(rows: list[list[Any]], dtype: np.dtype[Any] | None) -> npt.NDArray[Any]:
    """`np.asarray(rows, dtype)`, converted some rows at a time. Without a dtype each piece's
    is inferred and concatenating promotes them as numpy would have for all the rows at once
    (the integers' range is checked before, so no piece mixes negative and unsigned 64-bit)."""
    step = max(1, PIECE_ELEMENTS // max(1, len(rows[0])))
    pieces = [np.asarray(rows[start : start + step], dtype=dtype) for start in range(0, len(rows), step)]
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def rows_from_named_columns(columns: dict[str, Any], feature_names: Sequence[str] | None) -> npt.NDArray[Any]:
    """V1 `inputs` in the columnar form, `{"feature": [values, ...], ...}`, as an [N, F] matrix."""
    names = _require_names(feature_names, "inputs given as named columns")
    _check_names(set(columns), names)
    if not all(isinstance(columns[name], list) for name in names):
        raise InvalidInput("each named input must be a JSON array with one value per row")
    lengths = {len(columns[name]) for name in names}
    if len(lengths) > 1:
        raise InvalidInput(f"named inputs have different numbers of rows: {sorted(lengths)}")
    return rows_from_instances(
        [list(row) for row in zip(*(columns[name] for name in names), strict=True)], None
    )


def _require_names(feature_names: Sequence[str] | None, what: str) -> Sequence[str]:
    if feature_names is None:
        raise InvalidInput(f"{what} need a model that knows its feature names; send lists of values")
    return feature_names


def _check_names(given: set[str], expected: Sequence[str]) -> None:
    missing = [name for name in expected if name not in given]
    unknown = sorted(given - set(expected))
    if missing or unknown:
        raise InvalidInput(
            f"feature names do not match the model's: missing {missing or 'none'}, unknown {unknown or 'none'}"
        )


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))
