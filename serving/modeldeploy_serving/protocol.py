"""The request bodies of the V2 (Open Inference Protocol) and KServe V1 endpoints.

Only the shapes of the JSON are checked here; what the values mean is checked by the codec and
the model, so every problem is reported as a client error with a precise message.
"""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

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
