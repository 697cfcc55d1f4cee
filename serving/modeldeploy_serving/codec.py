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


def decode_tensor(name: str, datatype: str, shape: Sequence[int], data: Any) -> npt.NDArray[Any]:
    """Turn one V2 request tensor into an array of `shape` and `datatype`.

    `data` may be nested in the tensor's natural shape or flattened in row-major order.
    """
    dtype = V2_DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(
            f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(V2_DATATYPES)}"
        )
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': data must be a JSON array")
    expected_size = math.prod(shape)
    is_bytes = datatype == "BYTES"
    array = _decode_bytes(name, data) if is_bytes else _decode_numbers(name, datatype, dtype, data)
    if tuple(array.shape) != tuple(shape):
        if array.ndim != 1 or array.size != expected_size:
            raise InvalidInput(
                f"input '{name}': data has shape {list(array.shape)} ({array.size} elements) "
                f"but the declared shape {list(shape)} needs {expected_size} elements"
            )
        array = array.reshape(tuple(shape))
    return array


def _decode_numbers(name: str, datatype: str, dtype: np.dtype[Any], data: list[Any]) -> npt.NDArray[Any]:
    try:
        inferred = np.asarray(data)
    except (ValueError, OverflowError) as error:
        raise InvalidInput(f"input '{name}': data is ragged or not numeric ({error})") from None
    if inferred.size == 0:
        return inferred.astype(dtype)
    if inferred.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise InvalidInput(
            f"input '{name}': datatype {datatype} needs {_describe_kind(dtype.kind)} values, "
            f"got {_describe_kind(inferred.dtype.kind)}"
        )
    if dtype.kind in "ui":
        limits = np.iinfo(dtype)
        if int(inferred.min()) < limits.min or int(inferred.max()) > limits.max:
            raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
    elif dtype.kind == "f" and inferred.dtype.kind == "f" and dtype.itemsize < 8:
        finite = inferred[np.isfinite(inferred)]
        if finite.size and float(np.abs(finite).max()) > float(np.finfo(dtype).max):
            raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
    return inferred.astype(dtype)


def _decode_bytes(name: str, data: list[Any]) -> npt.NDArray[Any]:
    try:
        inferred = np.asarray(data, dtype=object)
    except ValueError as error:
        raise InvalidInput(f"input '{name}': data is ragged ({error})") from None
    flat = inferred.reshape(-1) if inferred.size else inferred
    if any(not isinstance(item, str) for item in flat):
        raise InvalidInput(f"input '{name}': datatype BYTES needs string values")
    return inferred


def _describe_kind(kind: str) -> str:
    return {
        "b": "boolean",
        "u": "integer",
        "i": "integer",
        "f": "numeric",
        "U": "string",
        "O": "mixed, null or too large",
    }.get(kind, kind)


def inline_binary_tensors(header: Any, blob: bytes) -> Any:
    """A request of the binary tensor data extension with each binary input's data as JSON.

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


def _decode_binary(name: str, datatype: Any, chunk: bytes) -> list[Any]:
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
    decoded: list[Any] = values_array.tolist()
    return decoded


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
    _check_finite(name, array)
    flat = array.reshape(-1)
    data = [str(item) for item in flat] if datatype == "BYTES" else flat.tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def json_values(array: npt.NDArray[Any]) -> list[Any]:
    """The array as nested JSON-ready lists (strings for non-numeric elements)."""
    if array.dtype.kind in "USO" and array.size:
        array = np.vectorize(str, otypes=[object])(array)
    _check_finite("predictions", array)
    result: list[Any] = array.tolist()
    return result


def _check_finite(name: str, array: npt.NDArray[Any]) -> None:
    """JSON has no NaN or infinity; extreme inputs can drive a model there (1e308 into a linear model)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(
            f"output '{name}' is not finite (NaN or infinity) for this input; check its values"
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
    try:
        array = np.asarray(instances)
    except (ValueError, OverflowError) as error:
        raise InvalidInput(f"instances are not a matrix of scalar values ({error})") from None
    if array.ndim != 2:
        raise InvalidInput("each instance must be a flat array of scalar feature values")
    flat = [item for row in instances for item in row]
    if array.dtype.kind not in "biufU" and not all(_is_scalar(item) for item in flat):
        raise InvalidInput("instances may only hold numbers, booleans and strings")
    if array.dtype.kind == "U" and not all(isinstance(item, str) for item in flat):
        # numpy would turn the numbers of mixed rows into strings; keep each value as it came.
        array = np.asarray(instances, dtype=object)
    return array


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
