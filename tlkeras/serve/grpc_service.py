"""TF Serving's gRPC API (PredictionService.Predict / GetModelMetadata, ModelService.GetModelStatus).

It uses the message and service classes of the `tensorflow-serving-api` package, so clients written for
TF Serving (`prediction_service_pb2_grpc.PredictionServiceStub`) work unchanged. `model_spec` may name
a `version` or a `version_label` (from `models.config`). Predict shares the REST server's admission
queue and batching.
"""

from __future__ import annotations

import logging
import time
from concurrent import futures

import numpy as np

from tlkeras.serve.batching import predict_alone
from tlkeras.serve.errors import GRPC_CODE_NAMES, ServingError
from tlkeras.serve.http_wire import printable
from tlkeras.serve.limits import AdmissionGate, ServerLimits
from tlkeras.serve.repository import ModelRepository

logger = logging.getLogger("tlkeras.serve")


def _logged(method):
    """Logs one line per gRPC call, like the REST server does."""

    def wrapper(self, request, context):
        start = time.perf_counter()
        code = "OK"
        try:
            return method(self, request, context)
        except Exception:
            code = context.code().name if context.code() is not None else "UNKNOWN"
            raise
        finally:
            milliseconds = (time.perf_counter() - start) * 1000
            logger.info('grpc "%s %s" %s %.1fms', method.__name__, printable(request.model_spec.name), code,
                        milliseconds)

    return wrapper


def _abort(context, err: ServingError):
    import grpc

    context.abort(getattr(grpc.StatusCode, GRPC_CODE_NAMES.get(err.status, "UNKNOWN")), str(err))


def _version_choice(model_spec) -> tuple[int | None, str | None]:
    """(version, label) named by a ModelSpec; both None for the newest version."""
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version_label":
        return None, model_spec.version_label
    return (model_spec.version.value, None) if choice == "version" else (None, None)


def tensor_inputs(request, max_bytes: int) -> dict[str, np.ndarray]:
    """dict[str, np.ndarray]: A PredictRequest's input tensors as arrays, refusing ones whose declared
    shape would unpack to more than `max_bytes` (a tiny message can declare a huge shape).

    Args:
        request: PredictRequest. The request.
        max_bytes: int. The largest tensor to unpack, in bytes.
    """
    import tensorflow as tf

    inputs = {}
    for key, proto in request.inputs.items():
        dims = [dim.size for dim in proto.tensor_shape.dim]
        if any(size < 0 for size in dims):
            raise ServingError(f"input '{key}' has a negative dimension. Received: shape={dims}")
        try:
            itemsize = 8 if proto.dtype == tf.string.as_datatype_enum else tf.as_dtype(proto.dtype).size
        except TypeError:
            raise ServingError(f"input '{key}' has an unknown dtype. Received: dtype={proto.dtype}") from None
        if int(np.prod(dims, dtype=object)) * max(itemsize, 1) > max_bytes:
            raise ServingError(f"input '{key}' of shape {dims} would take more than {max_bytes} bytes "
                               "(--max-body-bytes)")
        try:
            inputs[key] = tf.make_ndarray(proto)
        except (TypeError, ValueError) as err:
            raise ServingError(f"input '{key}' is not a valid TensorProto: {err}") from None
    return inputs


def make_grpc_server(repository: ModelRepository, host: str = "127.0.0.1", port: int = 8500,
                     max_workers: int = 16, predict=predict_alone, gate: AdmissionGate | None = None,
                     limits: ServerLimits | None = None):
    """grpc.Server: A started gRPC server answering TF Serving's PredictionService and ModelService.

    Args:
        repository: ModelRepository. The models to serve.
        host: str. The address to bind. Defaults to "127.0.0.1".
        port: int. The port; 0 picks a free one. Defaults to 8500.
        max_workers: int. Requests handled at once (more than the batch size, or batches stay small).
            Defaults to 16.
        predict: Callable. `predict_alone` or a `BatchScheduler`'s `predict`. Defaults to `predict_alone`.
        gate: AdmissionGate, optional. The admission queue, shared with REST. Defaults to a new one.
        limits: ServerLimits, optional. `max_body_bytes` bounds messages. Defaults to `ServerLimits()`.

    Returns the server; its bound port is the attribute `bound_port`.
    """
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    limits = limits or ServerLimits()
    gate = gate or AdmissionGate(limits.max_queued_requests)

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        @_logged
        def Predict(self, request, context):
            try:
                with gate.admit():
                    version, label = _version_choice(request.model_spec)
                    servable = repository.get(request.model_spec.name, version, label)
                    signature = servable.signature(request.model_spec.signature_name or None)
                    inputs = tensor_inputs(request, limits.max_body_bytes)
                    outputs = predict(servable, inputs, signature.name, list(request.output_filter)).outputs
            except ServingError as err:
                _abort(context, err)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature.name
            for key, array in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(array))
            return response

        @_logged
        def GetModelMetadata(self, request, context):
            try:
                if set(request.metadata_field) != {"signature_def"}:
                    raise ServingError(
                        "metadata_field must be ['signature_def']. "
                        f"Received: metadata_field={list(request.metadata_field)[:10]}"
                    )
                servable = repository.get(request.model_spec.name, *_version_choice(request.model_spec))
            except ServingError as err:
                _abort(context, err)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature_def in servable.meta_graph.signature_def.items():
                signature_map.signature_def[key].CopyFrom(signature_def)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.metadata["signature_def"].Pack(signature_map)
            return response

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        @_logged
        def GetModelStatus(self, request, context):
            try:
                statuses = repository.status(request.model_spec.name, *_version_choice(request.model_spec))
            except ServingError as err:
                _abort(context, err)
            response = get_model_status_pb2.GetModelStatusResponse()
            for status in statuses:
                entry = response.model_version_status.add()
                entry.version = status.version
                entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
                entry.status.error_code = 2 if status.error else 0  # tensorflow.error.Code UNKNOWN / OK
                entry.status.error_message = status.error
            return response

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tlkeras-grpc"),
        maximum_concurrent_rpcs=limits.max_queued_requests,
        options=[("grpc.max_receive_message_length", min(limits.max_body_bytes, 2**31 - 1))],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server.bound_port = server.add_insecure_port(address)
    server.start()
    return server
