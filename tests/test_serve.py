"""`tlkeras serve` as a real process, spoken to over HTTP (and gRPC) the way TF Serving clients do.

Tiny SavedModels mimic the exporter: `serving_default` takes encoded images as `image_bytes`, a second
signature takes uint8 pixels, and a text model takes `text`. Every answer is checked against calling the
same signature in-process.
"""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tlkeras.errors import TlkerasError
from tlkeras.serve.client import predict
from tlkeras.serve.errors import ServingError
from tlkeras.serve.repository import ModelRepository, VersionStatus

TLKERAS = str(Path(sys.executable).with_name("tlkeras"))
SERVER_START_SECONDS = 90


@pytest.fixture(scope="module")
def tf():
    import tensorflow as tf

    return tf


def _image_module(tf, labels):
    class ImageModel(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = tf.Variable(4.0 * tf.eye(3))
            self.labels = tf.constant(labels)

        def _head(self, pixels):
            mean = tf.reduce_mean(tf.image.resize(pixels, [8, 8]), axis=[1, 2]) / 255.0
            probabilities = tf.nn.softmax(tf.matmul(mean, self.weights))
            class_id = tf.argmax(probabilities, axis=1)
            return {"probabilities": probabilities, "class_id": class_id, "label": tf.gather(self.labels, class_id)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(self, image_bytes):
            def decode(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                return tf.image.resize(tf.cast(image, tf.float32), [8, 8])

            pixels = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([8, 8, 3], tf.float32))
            return self._head(pixels)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        def serve_images(self, images):
            return self._head(tf.cast(images, tf.float32))

    module = ImageModel()
    return module, {"serving_default": module.serve_bytes, "serving_images": module.serve_images}


def _text_module(tf):
    class TextModel(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"length": tf.strings.length(text, unit="UTF8_CHAR"), "upper": tf.strings.upper(text),
                    "text_bytes": text}

    module = TextModel()
    return module, {"serving_default": module.serve}


def _save_atomically(tf, module_and_signatures, version_dir: Path):
    """Writes into a `.tmp-*` sibling and renames, the way the exporter does."""
    module, signatures = module_and_signatures
    temporary = version_dir.parent / f".tmp-{version_dir.name}"
    tf.saved_model.save(module, str(temporary), signatures=signatures)
    os.rename(temporary, version_dir)


def _encoded(color, fmt, size=(11, 7)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def _http(url, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def server(tf, tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    (base / "img").mkdir()
    (base / "txt").mkdir()
    _save_atomically(tf, _image_module(tf, ["red", "green", "blue"]), base / "img" / "1")
    _save_atomically(tf, _text_module(tf), base / "txt" / "1")
    (base / "img" / ".tmp-7").mkdir()  # an unfinished export: must be ignored
    log_path = base.parent / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [TLKERAS, "serve", str(base), "--port", "0", "--grpc-port", "0", "--poll-seconds", "0.3"],
            stdout=log, stderr=subprocess.STDOUT,
        )

    def listening():
        if process.poll() is not None:
            raise AssertionError(f"server exited:\n{log_path.read_text()}")
        text = log_path.read_text()
        rest, grpc_port = re.search(r"REST API listening on (http://\S+:\d+)", text), re.search(
            r"gRPC API listening on \S+:(\d+)", text)
        return rest and grpc_port and (rest[1], int(grpc_port[1]))

    try:
        url, grpc_port = _wait_for(listening, SERVER_START_SECONDS, "the server to listen")
        yield {"url": url, "grpc_port": grpc_port, "base": base, "log": log_path, "process": process}
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def local_img(tf, server):
    return tf.saved_model.load(str(server["base"] / "img" / "1")).signatures


def test_status_reports_the_loaded_version(server):
    status, reply = _http(f"{server['url']}/v1/models/img")
    assert status == 200
    assert reply == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert _http(f"{server['url']}/v1/models/img/versions/1")[1] == reply


def test_metadata_describes_every_signature(server):
    status, reply = _http(f"{server['url']}/v1/models/img/metadata")
    assert status == 200
    assert reply["model_spec"] == {"name": "img", "signature_name": "", "version": "1"}
    signatures = reply["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert default["inputs"]["image_bytes"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert set(default["outputs"]) == {"probabilities", "class_id", "label"}
    assert signatures["serving_images"]["inputs"]["images"]["dtype"] == "DT_UINT8"


def test_row_format_matches_the_signature_in_process(server, local_img, tf):
    images = [_encoded((220, 20, 30), "PNG"), _encoded((10, 30, 240), "JPEG")]
    status, reply = _http(f"{server['url']}/v1/models/img:predict", {"instances": [_b64(i) for i in images]})
    assert status == 200
    expected = local_img["serving_default"](image_bytes=tf.constant(images))
    predictions = reply["predictions"]
    assert [p["label"] for p in predictions] == [b.decode() for b in expected["label"].numpy()] == ["red", "blue"]
    assert [p["class_id"] for p in predictions] == expected["class_id"].numpy().tolist()
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected["probabilities"], rtol=1e-6)

    named = {"instances": [{"image_bytes": _b64(images[0])}], "signature_name": "serving_default"}
    assert _http(f"{server['url']}/v1/models/img/versions/1:predict", named)[1]["predictions"] == predictions[:1]


def test_columnar_format_on_the_pixel_signature(server, local_img, tf):
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 5, 4, 3), dtype=np.uint8)
    body = {"signature_name": "serving_images", "inputs": {"images": pixels.tolist()}}
    status, reply = _http(f"{server['url']}/v1/models/img:predict", body)
    assert status == 200
    expected = local_img["serving_images"](images=tf.constant(pixels))
    outputs = reply["outputs"]
    assert outputs["class_id"] == expected["class_id"].numpy().tolist()
    np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"], rtol=1e-6)
    # A single input may also be given bare.
    bare = _http(f"{server['url']}/v1/models/img:predict", {"signature_name": "serving_images",
                                                             "inputs": pixels.tolist()})
    assert bare == (200, reply)


def test_text_model_takes_strings_and_returns_bytes_outputs_as_b64(server):
    status, reply = _http(f"{server['url']}/v1/models/txt:predict", {"instances": ["héllo", "ab"]})
    assert status == 200
    assert [p["length"] for p in reply["predictions"]] == [5, 2]
    assert [p["upper"] for p in reply["predictions"]] == ["HéLLO", "AB"]  # tf.strings.upper is ASCII-only
    assert reply["predictions"][0]["text_bytes"] == _b64("héllo".encode())


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("img:predict", b"{not json", 400, "not valid JSON"),
        ("img:predict", {"instances": [], "inputs": []}, 400, "exactly one of"),
        ("nosuchmodel:predict", {"instances": ["x"]}, 404, "not served here"),
        ("img/versions/9:predict", {"instances": ["x"]}, 404, "version 9"),
        ("img:predict", {"signature_name": "nope", "instances": ["x"]}, 400, "no signature 'nope'"),
        ("img:predict", {"instances": [{"pixels": "x"}]}, 400, "unknown input(s) ['pixels']"),
        ("img:predict", {"instances": [{"b64": "%%%not base64"}]}, 400, "not valid base64"),
        ("img:predict", {"instances": [["nested"]]}, 400, "expects shape [None]"),
        ("img:predict", {"instances": [_b64(b"not an image")]}, 400, "Unknown image file format"),
        ("img:predict", {"signature_name": "serving_images", "inputs": [[[[300, 0, 0]]]]}, 400, "[0, 255]"),
        ("img:predict", {"signature_name": "serving_images", "inputs": [[[[1, 2, 3]], [[1, 2]]]]}, 400, "ragged"),
        ("img:classify", {"examples": []}, 501, "use :predict"),
        ("img/labels/stable", None, 404, "labels"),
    ],
)
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(server, path, body, status, message):
    raw = body if isinstance(body, bytes) else None
    got_status, reply = _http(f"{server['url']}/v1/models/{path}", None if raw else body, raw)
    assert got_status == status
    assert message in reply["error"]
    assert _http(f"{server['url']}/v1/models/img")[0] == 200


def test_unknown_url_is_a_json_404(server):
    assert _http(f"{server['url']}/v2/stuff")[0] == 404


def test_each_request_is_logged_on_one_line(server):
    _http(f"{server['url']}/v1/models/txt/metadata")
    line = re.compile(r'"GET /v1/models/txt/metadata" 200 [\d.]+ms')
    _wait_for(lambda: line.search(server["log"].read_text()), 5, "the request's log line")


def test_grpc_predict_matches_rest(server, local_img, tf):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    image = _encoded((20, 200, 20), "PNG")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "img"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
    with grpc.insecure_channel(f"127.0.0.1:{server['grpc_port']}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        reply = stub.Predict(request, timeout=30)
        request.model_spec.name = "nosuchmodel"
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert reply.model_spec.version.value == 1
    assert tf.make_ndarray(reply.outputs["label"]).tolist() == [b"green"]
    expected = local_img["serving_default"](image_bytes=tf.constant([image]))["probabilities"]
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs["probabilities"]), expected, rtol=1e-6)


def test_predict_client_sends_files_and_text(server, tmp_path):
    image = tmp_path / "red.png"
    image.write_bytes(_encoded((250, 0, 0), "PNG"))
    assert predict(server["url"], "img", [image])[0]["label"] == "red"
    assert predict(server["url"], "txt", ["abc"], input_name="text")[0]["length"] == 3
    with pytest.raises(TlkerasError, match="answered 404"):
        predict(server["url"], "nosuchmodel", [image])


def test_predict_command(server, tmp_path):
    image = tmp_path / "blue.jpg"
    image.write_bytes(_encoded((0, 0, 250), "JPEG"))
    result = subprocess.run([TLKERAS, "predict", "--url", server["url"], "--model", "img", str(image)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["label"] == "blue"

    result = subprocess.run([TLKERAS, "predict", "--url", server["url"], "--model", "txt", "--text", "--table",
                             "four", "fivee"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^fivee +5 +\{\"b64\": \"Zml2ZWU=\"\} +FIVEE$", result.stdout, re.MULTILINE)

    result = subprocess.run([TLKERAS, "predict", "--url", server["url"], "--model", "img", "missing.png"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no such file: missing.png; pass --text")


def test_new_versions_and_models_are_picked_up_without_restart(server, tf):
    url, base = server["url"], server["base"]
    _save_atomically(tf, _image_module(tf, ["rouge", "vert", "bleu"]), base / "img" / "2")
    (base / "txt_copy").mkdir()
    _save_atomically(tf, _text_module(tf), base / "txt_copy" / "5")

    def version_2_live():
        reply = _http(f"{url}/v1/models/img")[1]
        return [s["state"] for s in reply["model_version_status"]] == ["AVAILABLE", "END"] and reply

    status = _wait_for(version_2_live, 30, "version 2 to replace version 1")
    assert [s["version"] for s in status["model_version_status"]] == ["2", "1"]
    red = {"instances": [_b64(_encoded((250, 0, 0), "PNG"))]}
    assert _http(f"{url}/v1/models/img:predict", red)[1]["predictions"][0]["label"] == "rouge"
    assert _http(f"{url}/v1/models/img/versions/2:predict", red)[1]["predictions"][0]["label"] == "rouge"
    assert _http(f"{url}/v1/models/img/versions/1:predict", red)[0] == 404  # the "latest" policy, as in TF Serving

    _wait_for(lambda: _http(f"{url}/v1/models/txt_copy")[0] == 200, 30, "the new model")
    assert _http(f"{url}/v1/models/txt_copy:predict", {"instances": ["ab"]})[1]["predictions"][0]["length"] == 2

    # A broken version 3 fails to load; version 2 keeps serving and the status says why.
    (base / "img" / "3").mkdir()
    (base / "img" / "3" / "saved_model.pb").write_bytes(b"garbage")

    def version_3_failed():
        states = _http(f"{url}/v1/models/img")[1]["model_version_status"]
        return states[0]["version"] == "3" and states[0]["state"] == "END" and states[0]

    failed = _wait_for(version_3_failed, 30, "version 3 to fail")
    assert failed["status"]["error_code"] != "OK" and failed["status"]["error_message"]
    assert _http(f"{url}/v1/models/img:predict", red)[1]["predictions"][0]["label"] == "rouge"
    assert server["process"].poll() is None


def test_repository_version_policies_and_failed_loads(tmp_path):
    loads = []

    def loader(name, version, path):
        loads.append((name, version))
        if (path / "broken").exists():
            raise ValueError("broken export")
        return SimpleNamespace(name=name, version=version, signatures={})

    def add(name, version, broken=False):
        folder = tmp_path / name / str(version)
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"")
        if broken:
            (folder / "broken").touch()

    add("m", 1)
    add("m", 2)
    (tmp_path / "m" / "latest" / "saved_model.pb").mkdir(parents=True)  # not an integer: ignored
    (tmp_path / ".tmp-x" / "1").mkdir(parents=True)  # hidden: ignored

    latest = ModelRepository(tmp_path, loader=loader)
    latest.refresh()
    assert latest.model_names() == ["m"] and latest.get("m").version == 2
    with pytest.raises(ServingError) as error:
        latest.get("m", 1)
    assert error.value.status == 404

    everything = ModelRepository(tmp_path, "all", loader=loader)
    everything.refresh()
    assert (everything.get("m", 1).version, everything.get("m").version) == (1, 2)

    add("m", 3, broken=True)
    latest.refresh()
    latest.refresh()
    assert latest.get("m").version == 2  # the old version keeps serving
    assert latest.status("m")[0] == VersionStatus(3, "END", "broken export")
    assert loads.count(("m", 3)) == 1  # not retried while the files are unchanged

    (tmp_path / "m" / "3" / "broken").unlink()
    latest.refresh()
    assert latest.get("m").version == 3
    assert [s.state for s in latest.status("m")] == ["AVAILABLE", "END"]

    shutil.rmtree(tmp_path / "m")
    latest.refresh()
    assert latest.model_names() == []
