"""The transport-agnostic data plane: health, metadata and inference for the one served model.

The HTTP layer only translates requests and responses; everything a protocol means is here, so
it is tested directly, without a server.
"""

import asyncio
import gc
import importlib.metadata
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_serving import codec
from modeldeploy_serving.batching import AdaptiveBatcher, Outputs
from modeldeploy_serving.errors import InvalidInput, ModelNotFound, ModelNotReady
from modeldeploy_serving.loading import LoadedArtifact, load_artifact
from modeldeploy_serving.metrics import ServerMetrics
from modeldeploy_serving.model import OUTPUT_PREDICT, OUTPUT_PREDICT_PROBA, Model, TensorSpec
from modeldeploy_serving.protocol import (
    InferenceRequest,
    OutputRequest,
    V1PredictRequest,
    V1Request,
    V2Request,
    from_inference_request,
)
from modeldeploy_serving.settings import ServerSettings

logger = logging.getLogger(__name__)

SERVER_NAME = "modeldeploy"
try:
    SERVER_VERSION = importlib.metadata.version("modeldeploy")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
    SERVER_VERSION = "unknown"

# The V2 protocol extensions this server implements: binary tensor data, for inputs and outputs.
EXTENSIONS = ("binary_tensor_data",)


@dataclass(frozen=True)
class V2Answer:
    """A V2 inference response: the JSON object, and the bytes of its binary outputs in order."""

    body: dict[str, Any]
    binary: list[bytes]
    rows: int
    """How many rows were predicted."""


class InlineEstimate:
    """Whether small predictions are quick enough to run on the event loop.

    A moving average of how long they take; above the budget they go to the prediction threads
    (which keep measuring them, so a model that becomes quick again comes back inline).
    """

    def __init__(self, budget_seconds: float, first_seconds: float = 0.0) -> None:
        self._budget = budget_seconds
        self._average = first_seconds

    def worth_it(self) -> bool:
        """Whether the next small prediction should run inline."""
        return self._average < self._budget

    def observe(self, seconds: float) -> None:
        """Account for one small prediction's duration."""
        self._average += (seconds - self._average) * 0.1


class DataPlane:
    """Serves one model under the name and version from the settings."""

    def __init__(
        self,
        settings: ServerSettings,
        metrics: ServerMetrics | None = None,
        peers: "WorkerGroup | None" = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._peers = peers
        self._model: Model | None = None
        self._artifact: LoadedArtifact | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=settings.prediction_threads, thread_name_prefix="predict"
        )
        self._batcher: AdaptiveBatcher | None = None
        self._in_flight = 0
        self._inline = InlineEstimate(settings.inline_predict_max_ms / 1000)

    # --- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load the artifact and run a warm-up prediction; the model is ready only afterwards."""
        started = time.perf_counter()
        settings = self._settings
        artifact = load_artifact(
            settings.model_dir,
            settings.model_format,
            settings.model_sha256,
            settings.allow_pickle,
            settings.on_version_mismatch,
            settings.trusted_types,
        )
        # The imports' and the model's objects live as long as the process: frozen, they are no
        # longer walked by the full collections that a large body's many lists set off (one took
        # the GIL for hundreds of milliseconds while health checks waited: V1 rows, nested data).
        gc.freeze()
        self.serve_model(artifact.model)
        self._artifact = artifact
        seconds = time.perf_counter() - started
        if self._metrics is not None:
            self._metrics.observe_model_loaded(seconds, artifact.digest, artifact.format)
        logger.info(
            "Loaded model %s (%s, sha256 %s) in %.2fs",
            *(settings.model_name, artifact.format, artifact.digest, seconds),
        )

    def serve_model(self, model: Model) -> None:
        """Warm `model` up and serve it (also how tests serve a model without an artifact)."""
        warm_up = model.warm_up_input()
        if warm_up is None:
            logger.warning("The model does not say how many features it takes: serving it without a warm-up")
        elif warm_up.from_artifact:
            self._warm_up(model, warm_up.rows)
        else:
            try:
                self._warm_up(model, warm_up.rows)
            except InvalidInput as error:
                # Made-up rows (zeros) may be outside what the model accepts, such as unknown
                # categories; the model did run its checks, which is what the warm-up is for.
                logger.warning("The warm-up with zeros was rejected, serving anyway: %s", error)
        self._model = model
        if self._peers is not None:
            self._peers.mark_ready()

    def _warm_up(self, model: Model, rows: npt.NDArray[Any]) -> None:
        """One prediction; its duration is the first guess at whether predictions run inline."""
        started = time.perf_counter()
        model.predict(rows, model.default_outputs)
        self._inline = InlineEstimate(
            self._settings.inline_predict_max_ms / 1000, time.perf_counter() - started
        )

    async def start(self) -> None:
        """Start the batcher, if enabled, on the running event loop."""
        if self._settings.batching_enabled:
            self._batcher = AdaptiveBatcher(
                predict=self._predict_now,
                run_in_thread=self._run_in_thread,
                max_rows=self._settings.batch_max_size,
                window_seconds=self._settings.batch_window_ms / 1000,
                consumers=self._settings.prediction_threads,
                in_flight=lambda: self._in_flight,
            )
            self._batcher.start()

    async def stop(self) -> None:
        """Stop the batcher and the prediction threads once in-flight work has finished."""
        if self._batcher is not None:
            await self._batcher.stop()
        self._executor.shutdown(wait=True)

    # --- health and metadata -----------------------------------------------------------------

    def live(self) -> bool:
        """The process can answer requests."""
        return True

    def ready(self) -> bool:
        """The model is loaded and warmed up, in this worker and all its peers."""
        return self._model is not None and (self._peers is None or self._peers.all_ready())

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether the named model is ready; ModelNotFound for a model this server lacks."""
        self._check_name(name, version)
        return self.ready()

    def server_metadata(self) -> dict[str, Any]:
        """The V2 server metadata object."""
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The V2 model metadata object."""
        model = self._ready_model(name, version)
        description = model.description
        metadata: dict[str, Any] = {
            "name": self._settings.model_name,
            "platform": description.platform,
            "inputs": [_tensor_metadata(spec) for spec in description.inputs],
            "outputs": [_tensor_metadata(spec) for spec in description.outputs],
        }
        if self._settings.model_version:
            metadata["versions"] = [self._settings.model_version]
        if self._artifact is not None:
            metadata["parameters"] = {
                "sha256": self._artifact.digest,
                "format": self._artifact.format,
                "saved_with_sklearn": self._artifact.saved_with_sklearn or "unknown",
            }
        if description.feature_names is not None:
            metadata.setdefault("parameters", {})["feature_names"] = ",".join(description.feature_names)
        return metadata

    def v1_models(self) -> dict[str, Any]:
        """The V1 model list."""
        return {"models": [self._settings.model_name]}

    def v1_model_status(self, name: str) -> dict[str, Any]:
        """The V1 model readiness object."""
        self._check_name(name, None)
        return {"name": self._settings.model_name, "ready": self.ready()}

    # --- inference ---------------------------------------------------------------------------

    async def infer(
        self, name: str, version: str | None, request: InferenceRequest | V2Request, offload: bool = False
    ) -> dict[str, Any]:
        """A V2 inference answered in JSON (binary outputs asked for are still JSON here)."""
        if isinstance(request, InferenceRequest):
            request = from_inference_request(request)
        request = replace(request, binary_output=False, outputs=_json_outputs(request.outputs))
        return (await self.infer_v2(name, version, request, offload)).body

    async def infer_v2(
        self, name: str, version: str | None, request: V2Request, offload: bool = False
    ) -> V2Answer:
        """A V2 inference: decode the tensors, predict, encode the requested outputs.

        With `offload` (a large request) decoding and encoding run on a thread, so the event
        loop keeps answering other requests (health checks) meanwhile.
        """
        model = self._ready_model(name, version)
        if offload:
            rows, outputs = await asyncio.to_thread(self._decode_v2, model, request)
        else:
            rows, outputs = self._decode_v2(model, request)
        results = await self._predict(rows, tuple(name for name, _ in outputs))

        def encode_and_record() -> V2Answer:
            answer = self._encode_v2(request, outputs, results, len(rows))
            # Counted only once the answer is certain: an output JSON cannot carry is an error.
            self._record(model, results)
            return answer

        if offload or len(rows) > self._settings.inline_max_rows:
            # Counting many rows' classes is as long as encoding them: both off the loop.
            return await asyncio.to_thread(encode_and_record)
        return encode_and_record()

    async def predict_v1(
        self, name: str, request: V1PredictRequest | V1Request, offload: bool = False
    ) -> dict[str, Any]:
        """A V1 prediction: one prediction per instance."""
        model = self._ready_model(name, None)
        if isinstance(request, V1PredictRequest):
            request = V1Request(instances=request.instances, inputs=request.inputs)
        if offload:
            rows = await asyncio.to_thread(self._decode_v1, model, request)
        else:
            rows = self._decode_v1(model, request)
        results = await self._predict(rows, (OUTPUT_PREDICT,))

        def encode_and_record() -> dict[str, Any]:
            predictions = codec.json_values(results[OUTPUT_PREDICT])
            self._record(model, results)
            return {"predictions": predictions}

        if offload or len(rows) > self._settings.inline_max_rows:
            return await asyncio.to_thread(encode_and_record)
        return encode_and_record()

    def _decode_v1(self, model: Model, request: V1Request) -> npt.NDArray[Any]:
        if (request.instances is None) == (request.inputs is None):
            raise InvalidInput("the body must hold exactly one of 'instances' and 'inputs'")
        names = model.description.feature_names
        if isinstance(request.inputs, dict):
            rows = codec.rows_from_named_columns(request.inputs, names)
        else:
            rows = codec.rows_from_instances(request.instances or request.inputs, names)
        self._check_width(model, rows)
        return rows

    def _decode_v2(self, model: Model, request: V2Request) -> tuple[npt.NDArray[Any], list[tuple[str, bool]]]:
        rows = self._rows_from_v2(model, request)
        return rows, self._requested_outputs(model, request)

    def _encode_v2(
        self, request: V2Request, outputs: list[tuple[str, bool]], results: Outputs, rows: int
    ) -> V2Answer:
        tensors = []
        binary = []
        for output, as_binary in outputs:
            if as_binary:
                tensor, data = codec.binary_output(output, results[output])
                tensors.append(tensor)
                binary.append(data)
            else:
                tensors.append(codec.encode_tensor(output, results[output]))
        body: dict[str, Any] = {
            "model_name": self._settings.model_name,
            "id": request.id if request.id is not None else str(uuid.uuid4()),
            "outputs": tensors,
        }
        if self._settings.model_version:
            body["model_version"] = self._settings.model_version
        return V2Answer(body, binary, rows)

    async def _predict(self, rows: npt.NDArray[Any], outputs: Sequence[str]) -> Outputs:
        self._in_flight += 1
        try:
            if self._batcher is not None:
                results = await self._batcher.predict(rows, outputs)
            elif len(rows) <= self._settings.inline_max_rows and self._inline.worth_it():
                # A thread hop costs more than a prediction this quick; the loop waits for it.
                started = time.perf_counter()
                results = self._predict_now(rows, outputs)
                self._inline.observe(time.perf_counter() - started)
            else:
                results = await self._run_in_thread(lambda: self._timed_predict(rows, outputs))
        finally:
            self._in_flight -= 1
        return results

    def _timed_predict(self, rows: npt.NDArray[Any], outputs: Sequence[str]) -> Outputs:
        started = time.perf_counter()
        results = self._predict_now(rows, outputs)
        if len(rows) <= self._settings.inline_max_rows:
            self._inline.observe(time.perf_counter() - started)
        return results

    def _predict_now(self, rows: npt.NDArray[Any], outputs: Sequence[str]) -> Outputs:
        if self._model is None:
            raise ModelNotReady("the model is not loaded")
        return self._model.predict(rows, outputs)

    async def _run_in_thread(self, function: Callable[[], Outputs]) -> Outputs:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    def _record(self, model: Model, results: Outputs) -> None:
        if self._metrics is None:
            return
        classes = model.description.classes
        if OUTPUT_PREDICT in results:
            predictions = results[OUTPUT_PREDICT]
        elif classes is not None and OUTPUT_PREDICT_PROBA in results:
            predictions = np.asarray(classes)[np.argmax(results[OUTPUT_PREDICT_PROBA], axis=1)]
        else:
            return
        # A piece at a time: tallying many rows' classes in one call holds the GIL for long.
        predictions = predictions.reshape(-1)
        for start in range(0, max(len(predictions), 1), codec.PIECE_ELEMENTS):
            self._metrics.observe_predictions(predictions[start : start + codec.PIECE_ELEMENTS], classes)

    # --- request checks ----------------------------------------------------------------------

    def _check_name(self, name: str, version: str | None) -> None:
        if name != self._settings.model_name:
            served = self._settings.model_name
            raise ModelNotFound(f"model '{name}' is not served here; this server serves '{served}'")
        if version is not None and version != self._settings.model_version:
            served = self._settings.model_version or "no explicit version"
            raise ModelNotFound(f"version '{version}' of model '{name}' is not served here; it has {served}")

    def _ready_model(self, name: str, version: str | None) -> Model:
        self._check_name(name, version)
        if self._model is None:
            raise ModelNotReady(f"model '{name}' is not ready yet")
        return self._model

    def _rows_from_v2(self, model: Model, request: V2Request) -> npt.NDArray[Any]:
        tensors = [
            (item.name, codec.decode_tensor(item.name, item.datatype, item.shape, item.data))
            for item in request.inputs
        ]
        names = [name for name, _ in tensors]
        if len(set(names)) != len(names):
            raise InvalidInput(f"input names must be unique, got {names}")
        if len(tensors) == 1:
            name, tensor = tensors[0]
            if tensor.ndim == 1 and model.description.inputs[0].shape[-1] == 1:
                tensor = tensor.reshape(-1, 1)
            if tensor.ndim != 2:
                raise InvalidInput(
                    f"input '{name}' must have shape [rows, features], got {list(tensor.shape)}; "
                    "or send one input of shape [rows] per feature"
                )
            rows = tensor
        else:
            feature_names = model.description.feature_names
            if feature_names is not None and set(names) == set(feature_names):
                by_name = dict(tensors)
                tensors = [(feature, by_name[feature]) for feature in feature_names]
            rows = codec.rows_from_columns(tensors)
        self._check_width(model, rows)
        return rows

    @staticmethod
    def _check_width(model: Model, rows: npt.NDArray[Any]) -> None:
        if rows.shape[0] == 0:
            raise InvalidInput("the request holds no rows")
        expected = model.description.inputs[0].shape[-1]
        if expected >= 0 and rows.shape[1] != expected:
            raise InvalidInput(f"the model expects {expected} features per row, got {rows.shape[1]}")

    @staticmethod
    def _requested_outputs(model: Model, request: V2Request) -> list[tuple[str, bool]]:
        """The outputs to answer, each with whether it goes as binary data."""
        if not request.outputs:
            return [(name, request.binary_output) for name in model.default_outputs]
        available = model.default_outputs
        chosen: dict[str, bool] = {}
        for output in request.outputs:
            chosen.setdefault(output.name, request.binary_output if output.binary is None else output.binary)
        unknown = [name for name in chosen if name not in available]
        if unknown:
            raise InvalidInput(
                f"unknown output(s) {', '.join(unknown)}; this model offers {', '.join(available)}"
            )
        return list(chosen.items())


def _json_outputs(outputs: list[OutputRequest] | None) -> list[OutputRequest] | None:
    if outputs is None:
        return None
    return [replace(output, binary=False) for output in outputs]


class WorkerGroup:
    """Worker processes that share a port: the pod is ready only when every one of them is.

    Otherwise a probe answered by a ready worker would route traffic to one still loading.
    Each worker marks itself ready with a file named after its process id in a shared directory.
    """

    def __init__(self, directory: Path, size: int) -> None:
        self._directory = directory
        self._size = size
        self._all_ready = False

    def mark_ready(self) -> None:
        """Record that this process has its model loaded and warmed up."""
        (self._directory / f"ready-{os.getpid()}").touch()

    def all_ready(self) -> bool:
        """Whether as many workers as the group has have marked themselves ready."""
        if not self._all_ready:
            self._all_ready = len(list(self._directory.glob("ready-*"))) >= self._size
        return self._all_ready


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
