"""TF Serving's gRPC API (PredictionService.Predict / GetModelMetadata, ModelService.GetModelStatus).

It uses the message and service classes of the `tensorflow-serving-api` package, so clients written for
TF Serving (`prediction_service_pb2_grpc.PredictionServiceStub`) work unchanged.
"""

from __future__ import annotations

import logging
import time
from concurrent import futures

from tlkeras.serve.errors import GRPC_CODE_NAMES, ServingError
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
            logger.info('grpc "%s %s" %s %.1fms', method.__name__, request.model_spec.name, code, milliseconds)

    return wrapper


def _abort(context, err: ServingError):
    import grpc

    context.abort(getattr(grpc.StatusCode, GRPC_CODE_NAMES.get(err.status, "UNKNOWN")), str(err))


def _version(model_spec) -> int | None:
    if model_spec.WhichOneof("version_choice") == "version_label":
        raise ServingError("version labels are not configured on this server; set model_spec.version", 404)
    return model_spec.version.value if model_spec.HasField("version") else None


def make_grpc_server(repository: ModelRepository, host: str = "127.0.0.1", port: int = 8500, max_workers: int = 4):
    """grpc.Server: A started gRPC server answering TF Serving's PredictionService and ModelService.

    Args:
        repository: ModelRepository. The models to serve.
        host: str. The address to bind. Defaults to "127.0.0.1".
        port: int. The port; 0 picks a free one. Defaults to 8500.
        max_workers: int. Requests handled at once. Defaults to 4.

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

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        @_logged
        def Predict(self, request, context):
            try:
                servable = repository.get(request.model_spec.name, _version(request.model_spec))
                signature = servable.signature(request.model_spec.signature_name or None)
                inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
                outputs = servable.predict(inputs, signature.name, list(request.output_filter))
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
                        f"Received: metadata_field={list(request.metadata_field)}"
                    )
                servable = repository.get(request.model_spec.name, _version(request.model_spec))
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
                statuses = repository.status(request.model_spec.name, _version(request.model_spec))
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

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server.bound_port = server.add_insecure_port(address)
    server.start()
    return server
