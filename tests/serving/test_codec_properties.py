"""Properties of the codec over generated tensors: layouts agree and encoding round-trips."""

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeldeploy_serving import codec
from modeldeploy_serving.errors import InvalidInput

shapes = st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=3)


@st.composite
def float_tensors(draw: st.DrawFn) -> tuple[list[int], list[float]]:
    shape = draw(shapes)
    values = st.floats(allow_nan=False, allow_infinity=False, width=64)
    return shape, draw(st.lists(values, min_size=math.prod(shape), max_size=math.prod(shape)))


def nest(flat: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0]
    return [nest(flat[index * step : (index + 1) * step], shape[1:]) for index in range(shape[0])]


@settings(max_examples=200, deadline=None)
@given(float_tensors())
def test_flat_and_nested_layouts_decode_alike_and_round_trip(tensor: tuple[list[int], list[float]]) -> None:
    shape, flat = tensor
    from_flat = codec.decode_tensor("x", "FP64", shape, flat)
    from_nested = codec.decode_tensor("x", "FP64", shape, nest(flat, shape))
    np.testing.assert_array_equal(from_flat, from_nested)
    encoded = codec.encode_tensor("x", from_flat)
    assert encoded["shape"] == shape
    assert encoded["data"] == flat


@settings(max_examples=200, deadline=None)
@given(shapes, st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=30))
def test_a_size_that_does_not_match_the_shape_is_always_a_client_error(
    shape: list[int], flat: list[int]
) -> None:
    if len(flat) == math.prod(shape):
        assert codec.decode_tensor("x", "INT64", shape, flat).shape == tuple(shape)
    else:
        with pytest.raises(InvalidInput):
            codec.decode_tensor("x", "INT64", shape, flat)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=2), children, max_size=2),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(codec.V2_DATATYPES)), shapes, st.lists(json_values, max_size=6))
def test_any_json_data_decodes_or_is_refused_as_a_client_error(
    datatype: str, shape: list[int], data: list[Any]
) -> None:
    try:
        array = codec.decode_tensor("x", datatype, shape, data)
    except InvalidInput:
        return
    assert array.shape == tuple(shape)
    assert array.dtype == codec.V2_DATATYPES[datatype]
