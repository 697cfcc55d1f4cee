"""The request bodies of the V2 (Open Inference Protocol) and KServe V1 endpoints.

Only the shapes of the JSON are checked here; what the values mean is checked by the codec and
the model, so every problem is reported as a client error with a precise message.
"""

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modeldeploy_serving.errors import InvalidInput

Parameters = dict[str, Any]
Dimension = Annotated[int, Field(ge=0, le=2**63 - 1)]


class RequestInput(BaseModel):
    """One input tensor: its name, shape, datatype and row-major (flat or nested) data."""

    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[Dimension]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any]


class RequestOutput(BaseModel):
    """An output the client wants returned."""

    model_config = ConfigDict(extra="allow")

    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    """The body of POST /v2/models/{model}/infer."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class V1PredictRequest(BaseModel):
    """The body of POST /v1/models/{model}:predict: rows as `instances`, or `inputs` (rows, or
    columns keyed by feature name)."""

    model_config = ConfigDict(extra="allow")

    instances: list[Any] | None = None
    inputs: list[Any] | dict[str, Any] | None = None


# --- the hot path ------------------------------------------------------------------------------
# Requests as the data plane uses them, checked by hand: building the pydantic models above costs
# more than a small prediction. Whatever the hand check does not accept as plainly valid is
# validated by the models, so every invalid body gets the models' precise message and anything
# the models accept (such as a shape given as strings of digits) is served as before.


@dataclass(frozen=True, slots=True)
class TensorInput:
    """One decoded-to-be input tensor; `data` is a JSON list, or an array from binary data."""

    name: str
    shape: list[int]
    datatype: str
    data: Any


@dataclass(frozen=True, slots=True)
class OutputRequest:
    """A requested output; `binary` is its `binary_data` parameter, None when not given."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True, slots=True)
class V2Request:
    """A valid V2 inference request body."""

    inputs: list[TensorInput]
    outputs: list[OutputRequest] | None = None
    id: str | None = None
    binary_output: bool = False
    """The request's `binary_data_output` parameter: outputs are binary unless they say otherwise."""


@dataclass(frozen=True, slots=True)
class V1Request:
    """A valid V1 predict request body."""

    instances: list[Any] | None = None
    inputs: list[Any] | dict[str, Any] | None = None


_MAX_DIMENSION = 2**63 - 1


def v2_request(body: Any) -> V2Request:
    """The V2 request in `body` (parsed JSON); InvalidInput naming every invalid field."""
    request = _plain_v2_request(body)
    if request is not None:
        return request
    try:
        model = InferenceRequest.model_validate(_without_arrays(body))
    except ValidationError as error:
        raise InvalidInput(describe_validation_errors(error.errors(), prefix="body")) from None
    return from_inference_request(model, body)


def from_inference_request(model: InferenceRequest, body: Any = None) -> V2Request:
    """The V2Request of a validated model; input data (lists, binary arrays) is taken from `body`
    if given (the model validated it without its data)."""
    inputs = []
    for index, item in enumerate(model.inputs):
        data: Any = item.data
        if body is not None and isinstance(body["inputs"][index].get("data"), (np.ndarray, list)):
            data = body["inputs"][index]["data"]
        inputs.append(TensorInput(item.name, list(item.shape), item.datatype, data))
    outputs = None
    if model.outputs is not None:
        outputs = [
            OutputRequest(output.name, _binary_parameter(output.parameters, "binary_data"))
            for output in model.outputs
        ]
    return V2Request(
        inputs=inputs,
        outputs=outputs,
        id=model.id,
        binary_output=bool(_binary_parameter(model.parameters, "binary_data_output")),
    )


def v1_request(body: Any) -> V1Request:
    """The V1 request in `body` (parsed JSON); InvalidInput naming every invalid field."""
    if isinstance(body, dict):
        instances, inputs = body.get("instances"), body.get("inputs")
        if (instances is None or isinstance(instances, list)) and (
            inputs is None or isinstance(inputs, (list, dict))
        ):
            return V1Request(instances=instances, inputs=inputs)
    try:
        model = V1PredictRequest.model_validate(body)
    except ValidationError as error:
        raise InvalidInput(describe_validation_errors(error.errors(), prefix="body")) from None
    return V1Request(instances=model.instances, inputs=model.inputs)


def _plain_v2_request(body: Any) -> V2Request | None:
    """The request if `body` is plainly valid (exact JSON types, no coercion needed), else None."""
    if type(body) is not dict:
        return None
    raw_inputs = body.get("inputs")
    request_id = body.get("id")
    parameters = body.get("parameters")
    if type(raw_inputs) is not list or not raw_inputs:
        return None
    if not (request_id is None or type(request_id) is str):
        return None
    if not (parameters is None or type(parameters) is dict):
        return None
    inputs = []
    for item in raw_inputs:
        if type(item) is not dict:
            return None
        name, shape, datatype = item.get("name"), item.get("shape"), item.get("datatype")
        data, item_parameters = item.get("data"), item.get("parameters")
        if type(name) is not str or type(datatype) is not str or type(shape) is not list:
            return None
        if not (type(data) is list or isinstance(data, np.ndarray)):
            return None
        if not (item_parameters is None or type(item_parameters) is dict):
            return None
        if not all(type(dim) is int and 0 <= dim <= _MAX_DIMENSION for dim in shape):
            return None
        inputs.append(TensorInput(name, shape, datatype, data))
    raw_outputs = body.get("outputs")
    outputs = None
    if raw_outputs is not None:
        if type(raw_outputs) is not list:
            return None
        outputs = []
        for output in raw_outputs:
            if type(output) is not dict or type(output.get("name")) is not str:
                return None
            output_parameters = output.get("parameters")
            if not (output_parameters is None or type(output_parameters) is dict):
                return None
            outputs.append(OutputRequest(output["name"], _binary_parameter(output_parameters, "binary_data")))
    return V2Request(
        inputs=inputs,
        outputs=outputs,
        id=request_id,
        binary_output=bool(_binary_parameter(parameters, "binary_data_output")),
    )


def _binary_parameter(parameters: Parameters | None, name: str) -> bool | None:
    """A boolean parameter of the binary tensor data extension; InvalidInput if not a boolean."""
    if parameters is None or name not in parameters:
        return None
    value = parameters[name]
    if type(value) is not bool:
        raise InvalidInput(f"parameter '{name}' must be true or false, got {value!r}")
    return value


def _without_arrays(body: Any) -> Any:
    """`body` with input data (lists, or arrays from binary data) shown to the models as empty
    lists, so that only the JSON structure is validated: pydantic copying a large body's data
    into new lists held the GIL in one call, and arrays would be copied into Python lists."""
    if not (isinstance(body, dict) and isinstance(body.get("inputs"), list)):
        return body
    inputs = [
        {**item, "data": []}
        if isinstance(item, dict) and isinstance(item.get("data"), (np.ndarray, list))
        else item
        for item in body["inputs"]
    ]
    return {**body, "inputs": inputs}


def describe_validation_errors(errors: Any, prefix: str = "") -> str:
    """One line naming each invalid field of a request, e.g. `body.inputs.0.shape: ...`."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in (*((prefix,) if prefix else ()), *error.get("loc", ())))
        message = error.get("msg", "invalid")
        if error.get("type") == "json_invalid":
            position = error.get("loc", ("body", "?"))[-1]
            location = "body"
            message = f"malformed JSON at character {position} ({error.get('ctx', {}).get('error', '')})"
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "invalid request"
