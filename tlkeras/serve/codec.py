"""TF Serving's JSON tensor encoding: request bodies to numpy inputs, outputs back to JSON.

It follows the documented REST API (tensorflow.org/tfx/serving/api_rest):
- row format `{"instances": [...]}`, answered with `{"predictions": [...]}`;
- columnar format `{"inputs": ...}`, answered with `{"outputs": ...}`;
- binary strings travel as `{"b64": "..."}`; string outputs whose name ends in `_bytes` are sent that way.

Nothing here imports TensorFlow: input specs only need `.dtype` (a `tf.DType`) and `.shape`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from tlkeras.serve.errors import ServingError

ROW = "row"
COLUMNAR = "columnar"

# Beyond this many values per output, float32 goes out with float64 digits (plain tolist) to stay fast.
_SHORT_FLOAT_LIMIT = 100_000
DEFAULT_MAX_DEPTH = 100
# A JSON string (escapes included), in the unrolled-loop form that never backtracks.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN_ARRAY, _OPEN_OBJECT = ord("["), ord("{")
_DEPTH_CHUNK = 1 << 20


def parse_request(body: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> dict:
    """dict: The JSON object of a predict request body, checked for TF Serving's top-level keys.

    The nesting depth is measured before parsing, so a deeply nested body is a 400, never a recursion
    error.

    Args:
        body: bytes. The raw request body.
        max_depth: int. The deepest nesting of arrays and objects allowed. Defaults to 100.
    """
    depth = json_depth(body or b"")
    if depth > max_depth:
        raise ServingError(f"the request body nests JSON arrays and objects {depth} deep; the limit is "
                           f"{max_depth} (--max-json-depth)")
    try:
        request = json.loads(body or b"")
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8 and over-long integers
        raise ServingError(f"the request body is not valid JSON: {err}") from None
    if not isinstance(request, dict):
        raise ServingError(f"the request body must be a JSON object. Received: {type(request).__name__}")
    if ("instances" in request) == ("inputs" in request):
        raise ServingError(
            'the request must have exactly one of "instances" (row format) or "inputs" (columnar format)'
        )
    signature_name = request.get("signature_name")
    if signature_name is not None and not isinstance(signature_name, str):
        raise ServingError(f'"signature_name" must be a string. Received: signature_name={signature_name!r}')
    return request


def json_depth(body: bytes) -> int:
    """int: How deep arrays and objects nest in a JSON text, found without parsing it (or recursing).

    Strings are blanked out first, so brackets inside them do not count. The result is exact for valid
    JSON; for invalid JSON it only bounds the work `json.loads` will do.

    Args:
        body: bytes. The JSON text.
    """
    structure = _JSON_STRING.sub(b'""', body).translate(None, _NOT_BRACKETS)
    if structure.count(b"[") + structure.count(b"{") <= 1:
        return min(1, len(structure))
    codes = np.frombuffer(structure, dtype=np.uint8)
    depth = deepest = 0
    for start in range(0, len(codes), _DEPTH_CHUNK):  # chunks bound the scratch memory to a few MB
        chunk = codes[start:start + _DEPTH_CHUNK]
        running = np.cumsum(np.where((chunk == _OPEN_ARRAY) | (chunk == _OPEN_OBJECT), 1, -1).astype(np.int32))
        running += depth
        deepest, depth = max(deepest, int(running.max())), int(running[-1])
    return deepest


def request_inputs(request: Mapping, input_specs: Mapping[str, Any]) -> tuple[str, dict[str, np.ndarray]]:
    """tuple: The request's format (`ROW` or `COLUMNAR`) and its inputs as numpy arrays keyed by name.

    Args:
        request: Mapping. A body from `parse_request`.
        input_specs: Mapping[str, tf.TensorSpec]. The signature's inputs by name.
    """
    if "instances" in request:
        request_format, columns = ROW, _row_columns(request["instances"], input_specs)
    else:
        request_format, columns = COLUMNAR, _columnar_columns(request["inputs"], input_specs)
    return request_format, {name: to_array(value, input_specs[name], name) for name, value in columns.items()}


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _is_named(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def check_input_names(given, input_specs: Mapping, where: str) -> None:
    """Raises ServingError unless `given` names exactly the signature's inputs.

    Args:
        given: Iterable[str]. The input names in the request.
        input_specs: Mapping[str, tf.TensorSpec]. The signature's inputs.
        where: str. What holds the names, for the message (e.g. "an instance").
    """
    unknown = sorted(set(given) - set(input_specs))
    if unknown:
        raise ServingError(f"{where} names unknown input(s) {unknown}; this signature takes {sorted(input_specs)}")
    missing = sorted(set(input_specs) - set(given))
    if missing:
        raise ServingError(f"{where} is missing input(s) {missing}; this signature takes {sorted(input_specs)}")


def _row_columns(instances, input_specs: Mapping) -> dict:
    if not isinstance(instances, list):
        raise ServingError(f'"instances" must be a list. Received: {type(instances).__name__}')
    if not instances:
        raise ServingError('"instances" is empty; send at least one instance')
    named = [_is_named(instance) for instance in instances]
    if not any(named):
        return _single_input(instances, input_specs, "each instance must be an object")
    if not all(named):
        raise ServingError('mix of named (object) and bare instances in "instances"; use one form')
    for instance in instances:
        check_input_names(instance, input_specs, "an instance")
    return {name: [instance[name] for instance in instances] for name in input_specs}


def _columnar_columns(inputs, input_specs: Mapping) -> dict:
    if not _is_named(inputs):
        return _single_input(inputs, input_specs, '"inputs" must be an object')
    check_input_names(inputs, input_specs, '"inputs"')
    return dict(inputs)


def _single_input(value, input_specs: Mapping, requirement: str) -> dict:
    """A bare (unnamed) value is allowed only when the signature has exactly one input."""
    if len(input_specs) != 1:
        raise ServingError(
            f"this signature takes inputs {sorted(input_specs)}, so {requirement} keyed by input name"
        )
    return {next(iter(input_specs)): value}


def to_array(value, spec, name: str) -> np.ndarray:
    """np.ndarray: A JSON value (nested lists) as an array of `spec.dtype`, checked against `spec.shape`.

    Strings become an object array of bytes; `{"b64": ...}` values are decoded.

    Args:
        value: Any. The JSON value of one input tensor.
        spec: tf.TensorSpec. The signature's spec for that input.
        name: str. The input's name, for error messages.
    """
    dtype = spec.dtype
    if dtype.name == "string":
        array = _string_array(value, name)
    elif dtype.is_bool or dtype.is_integer or dtype.is_floating:
        array = _numeric_array(value, dtype, name)
    else:
        raise ServingError(f"input '{name}' has dtype {dtype.name}, which the JSON API cannot carry")
    if not spec.shape.is_compatible_with(array.shape):
        raise ServingError(
            f"input '{name}' expects shape {spec.shape.as_list()} (None means any size). "
            f"Received: shape={list(array.shape)}"
        )
    return array


def _flatten(value, leaves: list, name: str) -> tuple:
    if not isinstance(value, list):
        leaves.append(value)
        return ()
    shapes = [_flatten(item, leaves, name) for item in value]
    if any(shape != shapes[0] for shape in shapes[1:]):
        raise ServingError(f"input '{name}' is ragged: lists at the same depth must have the same length")
    return (len(value),) + (shapes[0] if shapes else ())


def _string_array(value, name: str) -> np.ndarray:
    leaves: list = []
    shape = _flatten(value, leaves, name)
    encoded = []
    for leaf in leaves:
        if isinstance(leaf, str):
            try:
                encoded.append(leaf.encode("utf-8"))
            except UnicodeEncodeError:  # JSON can spell lone surrogates ("\ud800"); UTF-8 cannot
                raise ServingError(f"input '{name}' has a string that is not valid Unicode (a lone "
                                   "surrogate); send such data as {\"b64\": ...}") from None
        elif _is_b64(leaf) and isinstance(leaf["b64"], str):
            try:
                encoded.append(base64.b64decode(leaf["b64"], validate=True))
            except (binascii.Error, ValueError):
                raise ServingError(f"input '{name}' has a \"b64\" value that is not valid base64") from None
        else:
            raise ServingError(
                f"input '{name}' takes strings or {{\"b64\": ...}} objects. Received: {_short(leaf)}"
            )
    array = np.empty(len(encoded), dtype=object)
    array[:] = encoded
    return array.reshape(shape)


def _numeric_array(value, dtype, name: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError):
        # numpy refuses ragged nesting; _flatten names the problem precisely.
        _flatten(value, [], name)
        raise ServingError(f"input '{name}' must be a (nested) list of numbers") from None
    wanted = "true/false" if dtype.is_bool else "numbers"
    kind_ok = array.dtype.kind == "b" if dtype.is_bool else array.dtype.kind in "iuf"
    if array.dtype == object or not (kind_ok or array.size == 0):
        raise ServingError(f"input '{name}' has dtype {dtype.name} and takes {wanted}. Received: {_short(value)}")
    if dtype.is_integer and array.size:
        if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
            raise ServingError(f"input '{name}' has dtype {dtype.name} and takes whole numbers")
        if array.min() < dtype.min or array.max() > dtype.max:
            raise ServingError(
                f"input '{name}' has dtype {dtype.name}; values must lie in [{dtype.min}, {dtype.max}]. "
                f"Received: min={array.min()}, max={array.max()}"
            )
    return array.astype(dtype.as_numpy_dtype)


def _short(value, limit: int = 60) -> str:
    text = json.dumps(_preview(value), default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _preview(value, depth: int = 0):
    """A few leading items of `value`, so describing a wrong value never copies all of it."""
    if isinstance(value, list):
        if depth > 2:
            return ["..."]
        return [_preview(item, depth + 1) for item in value[:4]] + ["..."] * (len(value) > 4)
    if isinstance(value, dict):
        if depth > 2:
            return {"...": "..."}
        return {key: _preview(value[key], depth + 1) for key in itertools.islice(value, 4)}
    if isinstance(value, str) and len(value) > 60:
        return value[:57] + "..."
    return value


def encode_outputs(outputs: Mapping[str, np.ndarray], request_format: str) -> dict:
    """dict: The reply body: `{"predictions": ...}` for row requests, `{"outputs": ...}` for columnar ones.

    A single output is sent bare, several as objects keyed by output name, as TF Serving does.

    Args:
        outputs: Mapping[str, np.ndarray]. The signature's outputs.
        request_format: str. `ROW` or `COLUMNAR`, as returned by `request_inputs`.
    """
    values = {name: json_value(np.asarray(array), name) for name, array in sorted(outputs.items())}
    if request_format == COLUMNAR:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    batch_sizes = {name: np.shape(array)[0] if np.ndim(array) else None for name, array in outputs.items()}
    if None in batch_sizes.values() or len(set(batch_sizes.values())) > 1:
        raise ServingError(
            f"the outputs do not share a batch dimension (sizes {batch_sizes}), so they cannot be split into "
            'rows; send the request in columnar format ("inputs")'
        )
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    size = next(iter(batch_sizes.values()))
    return {"predictions": [{name: column[i] for name, column in values.items()} for i in range(size)]}


def json_value(array: np.ndarray, name: str):
    """Any: One output tensor as nested JSON lists.

    Strings are sent as text when they are valid UTF-8 and the name does not end in `_bytes`, otherwise as
    `{"b64": ...}`. float32 values keep their shortest decimal form (0.1, not 0.10000000149011612).

    Args:
        array: np.ndarray. The output tensor's value.
        name: str. The output's name.
    """
    if array.dtype == object or array.dtype.kind == "S":
        as_b64 = name.endswith("_bytes")
        flat = [_string_value(item, as_b64) for item in array.ravel()]
        return _reshape(flat, array.shape)
    if array.dtype.kind not in "biuf":
        array = array.astype(np.float32)  # bfloat16 and other ml_dtypes types
    if array.dtype.kind == "f" and array.dtype.itemsize < 8 and array.size <= _SHORT_FLOAT_LIMIT:
        return np.array([float(str(v)) for v in array.ravel()], dtype=np.float64).reshape(array.shape).tolist()
    return array.tolist()


def _string_value(item: bytes, as_b64: bool):
    if not as_b64:
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(item).decode("ascii")}


def _reshape(flat: list, shape: tuple):
    if not shape:
        return flat[0]
    step = len(flat) // shape[0] if shape[0] else 0
    return [_reshape(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def dumps(body: dict) -> bytes:
    """bytes: A reply body as JSON; NaN and Infinity are written as tokens, as TF Serving does."""
    return json.dumps(body, allow_nan=True, separators=(",", ":")).encode("utf-8")
