"""`tlkeras serve` as a real process, spoken to over HTTP (and gRPC) the way TF Serving clients do.

Tiny SavedModels (tests/serve/serve_helpers.py) mimic the exporter. Every answer is checked against calling
the same signature in-process.
"""

import json
import re
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from serve_helpers import (
    TLKERAS,
    ServerProcess,
    b64,
    encoded,
    http,
    image_module,
    raw_request,
    read_reply,
    request_bytes,
    save_atomically,
    text_module,
    wait_for,
)

from tlkeras.errors import TlkerasError
from tlkeras.serve.client import predict
from tlkeras.serve.errors import ServingError
from tlkeras.serve.repository import ModelRepository, VersionStatus


@pytest.fixture(scope="module")
def tf():
    import tensorflow as tf

    return tf


@pytest.fixture(scope="module")
def server(tf, tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    (base / "img").mkdir()
    (base / "txt").mkdir()
    save_atomically(tf, image_module(tf, ["red", "green", "blue"]), base / "img" / "1")
    save_atomically(tf, text_module(tf), base / "txt" / "1")
    (base / "img" / ".tmp-7").mkdir()  # an unfinished export: must be ignored
    process = ServerProcess(base, "--grpc-port", "0", "--poll-seconds", "0.3")
    try:
        yield {"url": process.url, "grpc_port": process.grpc_port, "base": base, "log": process.log,
               "process": process.process}
    finally:
        process.stop()


@pytest.fixture(scope="module")
def local_img(tf, server):
    return tf.saved_model.load(str(server["base"] / "img" / "1")).signatures


def test_status_reports_the_loaded_version(server):
    status, reply = http(f"{server['url']}/v1/models/img")
    assert status == 200
    assert reply == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert http(f"{server['url']}/v1/models/img/versions/1")[1] == reply


def test_metadata_describes_every_signature(server):
    status, reply = http(f"{server['url']}/v1/models/img/metadata")
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
    images = [encoded((220, 20, 30), "PNG"), encoded((10, 30, 240), "JPEG")]
    status, reply = http(f"{server['url']}/v1/models/img:predict", {"instances": [b64(i) for i in images]})
    assert status == 200
    expected = local_img["serving_default"](image_bytes=tf.constant(images))
    predictions = reply["predictions"]
    assert [p["label"] for p in predictions] == [b.decode() for b in expected["label"].numpy()] == ["red", "blue"]
    assert [p["class_id"] for p in predictions] == expected["class_id"].numpy().tolist()
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected["probabilities"], rtol=1e-6)

    named = {"instances": [{"image_bytes": b64(images[0])}], "signature_name": "serving_default"}
    assert http(f"{server['url']}/v1/models/img/versions/1:predict", named)[1]["predictions"] == predictions[:1]


def test_columnar_format_on_the_pixel_signature(server, local_img, tf):
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 5, 4, 3), dtype=np.uint8)
    body = {"signature_name": "serving_images", "inputs": {"images": pixels.tolist()}}
    status, reply = http(f"{server['url']}/v1/models/img:predict", body)
    assert status == 200
    expected = local_img["serving_images"](images=tf.constant(pixels))
    outputs = reply["outputs"]
    assert outputs["class_id"] == expected["class_id"].numpy().tolist()
    np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"], rtol=1e-6)
    # A single input may also be given bare.
    bare = http(f"{server['url']}/v1/models/img:predict", {"signature_name": "serving_images",
                                                             "inputs": pixels.tolist()})
    assert bare == (200, reply)


def test_text_model_takes_strings_and_returns_bytes_outputs_as_b64(server):
    status, reply = http(f"{server['url']}/v1/models/txt:predict", {"instances": ["héllo", "ab"]})
    assert status == 200
    assert [p["length"] for p in reply["predictions"]] == [5, 2]
    assert [p["upper"] for p in reply["predictions"]] == ["HéLLO", "AB"]  # tf.strings.upper is ASCII-only
    assert reply["predictions"][0]["text_bytes"] == b64("héllo".encode())


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
        ("img:predict", {"instances": [b64(b"not an image")]}, 400, "Unknown image file format"),
        ("img:predict", {"signature_name": "serving_images", "inputs": [[[[300, 0, 0]]]]}, 400, "[0, 255]"),
        ("img:predict", {"signature_name": "serving_images", "inputs": [[[[1, 2, 3]], [[1, 2]]]]}, 400, "ragged"),
        ("img:classify", {"examples": []}, 400, "use :predict"),
        ("img:regress", {"examples": []}, 400, "use :predict"),
        ("img/labels/stable", None, 404, "--model-config-file"),
        ("img/versions/1x", None, 400, "whole number"),
        ("img:predict", {"instances": ["\ud800"]}, 400, "lone surrogate"),
        ("img:predict", {"instances": [{"b64": "é"}]}, 400, "not valid base64"),
        ("img:predict", {"instances": [{"b64": 5}]}, 400, "takes strings"),
        ("img:predict", {"instances": [[[[1]]]] * 3, "signature_name": "serving_images"}, 400, "expects shape"),
        ("img:predict", {"inputs": {"image_bytes": [], "extra": 1}}, 400, "unknown input(s) ['extra']"),
        ("..%2Fimg:predict", {"instances": ["x"]}, 404, "not served here"),
        ("img%2F..%2F..%2Ftxt:predict", {"instances": ["x"]}, 404, "not served here"),
        ("img%00/metadata", None, 404, "not served here"),
    ],
)
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(server, path, body, status, message):
    raw = body if isinstance(body, bytes) else None
    got_status, reply = http(f"{server['url']}/v1/models/{path}", None if raw else body, raw)
    assert got_status == status
    assert message in reply["error"]
    assert http(f"{server['url']}/v1/models/img")[0] == 200


def test_unknown_url_is_a_json_404(server):
    assert http(f"{server['url']}/v2/stuff")[0] == 404


def test_each_request_is_logged_on_one_line(server):
    http(f"{server['url']}/v1/models/txt/metadata")
    line = re.compile(r'"GET /v1/models/txt/metadata" 200 [\d.]+ms')
    wait_for(lambda: line.search(server["log"].read_text()), 5, "the request's log line")


def test_grpc_predict_matches_rest(server, local_img, tf):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    image = encoded((20, 200, 20), "PNG")
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
    image.write_bytes(encoded((250, 0, 0), "PNG"))
    assert predict(server["url"], "img", [image])[0]["label"] == "red"
    assert predict(server["url"], "txt", ["abc"], input_name="text")[0]["length"] == 3
    with pytest.raises(TlkerasError, match="answered 404"):
        predict(server["url"], "nosuchmodel", [image])


def test_predict_command(server, tmp_path):
    image = tmp_path / "blue.jpg"
    image.write_bytes(encoded((0, 0, 250), "JPEG"))
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
    save_atomically(tf, image_module(tf, ["rouge", "vert", "bleu"]), base / "img" / "2")
    (base / "txt_copy").mkdir()
    save_atomically(tf, text_module(tf), base / "txt_copy" / "5")

    def version_2_live():
        reply = http(f"{url}/v1/models/img")[1]
        return [s["state"] for s in reply["model_version_status"]] == ["AVAILABLE", "END"] and reply

    status = wait_for(version_2_live, 60, "version 2 to replace version 1")
    assert [s["version"] for s in status["model_version_status"]] == ["2", "1"]
    red = {"instances": [b64(encoded((250, 0, 0), "PNG"))]}
    assert http(f"{url}/v1/models/img:predict", red)[1]["predictions"][0]["label"] == "rouge"
    assert http(f"{url}/v1/models/img/versions/2:predict", red)[1]["predictions"][0]["label"] == "rouge"
    assert http(f"{url}/v1/models/img/versions/1:predict", red)[0] == 404  # the "latest" policy, as in TF Serving

    wait_for(lambda: http(f"{url}/v1/models/txt_copy")[0] == 200, 60, "the new model")
    assert http(f"{url}/v1/models/txt_copy:predict", {"instances": ["ab"]})[1]["predictions"][0]["length"] == 2

    # A broken version 3 fails to load; version 2 keeps serving and the status says why.
    (base / "img" / "3").mkdir()
    (base / "img" / "3" / "saved_model.pb").write_bytes(b"garbage")

    def version_3_failed():
        states = http(f"{url}/v1/models/img")[1]["model_version_status"]
        return states[0]["version"] == "3" and states[0]["state"] == "END" and states[0]

    failed = wait_for(version_3_failed, 60, "version 3 to fail")
    assert failed["status"]["error_code"] != "OK" and failed["status"]["error_message"]
    assert http(f"{url}/v1/models/img:predict", red)[1]["predictions"][0]["label"] == "rouge"
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


def test_unsupported_methods_get_405_and_path_tricks_404_on_the_real_server(server):
    port = int(server["url"].rsplit(":", 1)[1])
    for method in ("PUT", "DELETE", "PATCH"):
        reply = raw_request(port, request_bytes(method, "/v1/models/img", b"{}"))
        assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD", method
        reply = raw_request(port, request_bytes(method, "/v1/models/img:predict", b"{}"))
        assert reply.status == 405 and reply.headers["allow"] == "POST", method
    assert raw_request(port, request_bytes("DELETE", "/v1/nothing")).status == 404
    assert raw_request(port, request_bytes("GET", "/v1/models/img/../txt")).status == 404
    assert http(f"{server['url']}/v1/models/img")[0] == 200


def _write_models_config(base, labels: dict):
    """models.config as `tlkeras deploy-config` writes it, with `labels` ({model: {label: version}})."""
    from google.protobuf import text_format

    from tlkeras.export.deploy import model_server_config, model_versions
    from tlkeras.files import write_text

    config = model_server_config(model_versions(base))
    for entry in config.model_config_list.config:
        entry.version_labels.clear()
        entry.version_labels.update(labels.get(entry.name, {}))
    write_text(base / "models.config", text_format.MessageToString(config))


@pytest.fixture(scope="module")
def labelled_server(tf, tmp_path_factory):
    """img versions 1 (English labels) and 2 (French), models.config with stable=1 and canary=2, and
    batching on (8 rows, a 20 ms window, one batch thread) from the batching_parameters.txt beside them."""
    base = tmp_path_factory.mktemp("labelled")
    (base / "img").mkdir()
    save_atomically(tf, image_module(tf, ["red", "green", "blue"]), base / "img" / "1")
    save_atomically(tf, image_module(tf, ["rouge", "vert", "bleu"]), base / "img" / "2")
    _write_models_config(base, {"img": {"stable": 1, "canary": 2}})
    (base / "batching_parameters.txt").write_text(
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 20000 }\nnum_batch_threads { value: 1 }\n")
    process = ServerProcess(base, "--grpc-port", "0", "--poll-seconds", "0.3", "--enable-batching")
    try:
        yield SimpleNamespace(url=process.url, grpc_port=process.grpc_port, base=base, process=process)
    finally:
        process.stop()


def test_version_labels_resolve_from_models_config(labelled_server):
    url, red = labelled_server.url, {"instances": [b64(encoded((250, 0, 0), "PNG"))]}
    assert http(f"{url}/v1/models/img:predict", red)[1]["predictions"][0]["label"] == "rouge"  # newest
    assert http(f"{url}/v1/models/img/labels/stable:predict", red)[1]["predictions"][0]["label"] == "red"
    assert http(f"{url}/v1/models/img/labels/canary:predict", red)[1]["predictions"][0]["label"] == "rouge"
    status, reply = http(f"{url}/v1/models/img/labels/stable")
    assert status == 200 and [s["version"] for s in reply["model_version_status"]] == ["1"]
    assert http(f"{url}/v1/models/img/labels/stable/metadata")[1]["model_spec"]["version"] == "1"
    status, reply = http(f"{url}/v1/models/img/labels/nightly:predict", red)
    assert status == 404
    assert "Unrecognized servable version label" in reply["error"] and "['canary', 'stable']" in reply["error"]


def test_grpc_version_label(labelled_server, tf):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "img"
    request.model_spec.version_label = "stable"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([encoded((0, 0, 250), "PNG")]))
    with grpc.insecure_channel(f"127.0.0.1:{labelled_server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        reply = stub.Predict(request, timeout=30)
        request.model_spec.version_label = "nightly"
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request, timeout=30)
        request.model_spec.version.value = 2
        request.inputs["image_bytes"].tensor_shape.dim[0].size = 10**12  # declares a huge tensor
        with pytest.raises(grpc.RpcError) as huge:
            stub.Predict(request, timeout=30)
    assert reply.model_spec.version.value == 1 and tf.make_ndarray(reply.outputs["label"]).tolist() == [b"blue"]
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "['canary', 'stable']" in error.value.details()
    assert huge.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max-body-bytes" in huge.value.details()


def test_concurrent_predicts_are_batched_and_each_reply_is_what_it_gets_alone(labelled_server):
    url = labelled_server.url
    rng = np.random.default_rng(0)
    colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(12)]
    requests = [("img:predict", {"instances": [b64(encoded(colour, "PNG"))]}) for colour in colours[:8]]
    requests.append(("img:predict", {"instances": [b64(encoded(c, "JPEG")) for c in colours[8:11]]}))
    for shape in [(1, 5, 4, 3), (2, 5, 4, 3), (1, 6, 6, 3)]:  # pixel requests of two shapes: never mixed
        pixels = rng.integers(0, 256, size=shape).tolist()
        requests.append(("img:predict", {"signature_name": "serving_images", "inputs": {"images": pixels}}))
    requests.append(("img/labels/stable:predict", {"instances": [b64(encoded(colours[11], "PNG"))]}))
    requests.append(("img:predict", {"instances": [b64(b"not an image")]}))  # fails alone, not its batch

    def send(request):
        return http(f"{url}/v1/models/{request[0]}", request[1])

    alone = [send(request) for request in requests]
    assert [status for status, _ in alone] == [200] * (len(requests) - 1) + [400]
    for _ in range(3):
        with ThreadPoolExecutor(len(requests)) as pool:
            together = list(pool.map(send, requests))
        # Labels, class ids, errors exactly; float32 outputs to 1e-5, because TF's kernels round
        # differently at different batch sizes (so does TF Serving's batching). Every request's image
        # differs, so a reply given to the wrong request would fail by far more.
        for (status, reply), (status_alone, reply_alone) in zip(together, alone, strict=True):
            assert status == status_alone
            _assert_same_json(reply, reply_alone)
    batched = [int(n) for n in re.findall(r"\(batch of (\d+) requests\)", labelled_server.process.log_text())]
    assert batched and max(batched) >= 3


def _assert_same_json(got, expected):
    if isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected)
        for item, item_expected in zip(got, expected, strict=True):
            _assert_same_json(item, item_expected)
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected)
        for key in expected:
            _assert_same_json(got[key], expected[key])
    else:
        assert got == expected and type(got) is type(expected)


def test_relabelling_takes_effect_without_restart(labelled_server):
    url, red = labelled_server.url, {"instances": [b64(encoded((250, 0, 0), "PNG"))]}
    _write_models_config(labelled_server.base, {"img": {"stable": 2}})

    def stable_is_2():
        status, reply = http(f"{url}/v1/models/img/labels/stable:predict", red)
        return status == 200 and reply["predictions"][0]["label"] == "rouge"

    wait_for(stable_is_2, 15, "stable to move to version 2")
    assert http(f"{url}/v1/models/img/labels/canary")[0] == 404
    wait_for(lambda: http(f"{url}/v1/models/img/versions/1")[1]["model_version_status"][0]["state"] == "END",
             15, "version 1, no longer labelled, to unload")
    (labelled_server.base / "models.config").write_text("not a { config")  # a bad edit keeps the last labels
    time.sleep(1)
    assert stable_is_2()
    assert labelled_server.process.process.poll() is None


def test_sigterm_drains_requests_in_flight_then_exits_0(tf, tmp_path):
    base = tmp_path / "models"
    (base / "img").mkdir(parents=True)
    save_atomically(tf, image_module(tf, ["red", "green", "blue"]), base / "img" / "1")
    process = ServerProcess(base)
    body = json.dumps({"instances": [b64(encoded((0, 250, 0), "PNG"))]}).encode()
    try:
        with socket.create_connection(("127.0.0.1", process.port), timeout=30) as sock:
            sock.sendall(f"POST /v1/models/img:predict HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            time.sleep(0.5)  # the head is in: the request is in flight
            process.process.send_signal(signal.SIGTERM)
            wait_for(lambda: "stopped listening" in process.log_text(), 10, "the server to stop listening")
            with pytest.raises(OSError):  # no new connections once draining
                socket.create_connection(("127.0.0.1", process.port), timeout=5).close()
            time.sleep(1.0)
            assert process.process.poll() is None  # still waiting for our body
            sock.sendall(body)
            reply = read_reply(sock)
        assert reply.status == 200 and reply.json()["predictions"][0]["label"] == "green"
        assert reply.headers["connection"] == "close"
        assert process.process.wait(timeout=30) == 0
        assert "server stopped" in process.log_text()
    finally:
        process.stop()


def test_unregistered_ops_are_found_before_loading_and_named(monkeypatch, tmp_path):
    import sys

    from tensorflow.core.protobuf import meta_graph_pb2

    from tlkeras.serve.repository import ModelLoadError, _load_saved_model, unregistered_ops

    meta_graph = meta_graph_pb2.MetaGraphDef()
    for name in ("Const", "NoSuchOpXyz", "StatefulPartitionedCall"):
        meta_graph.meta_info_def.stripped_op_list.op.add(name=name)
    assert unregistered_ops(meta_graph) == ["NoSuchOpXyz"]
    graph_only = meta_graph_pb2.MetaGraphDef()  # no stripped op list: the graph's nodes are read
    graph_only.graph_def.node.add(name="a", op="AlsoMissingOp")
    function = graph_only.graph_def.library.function.add()
    function.signature.name = "my_function"
    function.node_def.add(name="b", op="my_function")  # a call of a library function, not an op
    function.node_def.add(name="c", op="Identity")
    assert unregistered_ops(graph_only) == ["AlsoMissingOp"]

    with pytest.raises(ModelLoadError, match=r"does not register: \['NoSuchOpXyz'\]"):
        _load_saved_model(tmp_path, meta_graph)
    monkeypatch.setitem(sys.modules, "tensorflow_text", None)  # as if tensorflow-text were not installed
    with pytest.raises(ModelLoadError, match="pip install tensorflow-text") as error:
        _load_saved_model(tmp_path, meta_graph)
    assert isinstance(error.value.__cause__, ImportError)


def test_configure_logging_adds_one_handler_however_often_it_runs():
    import logging

    from tlkeras.cli.serve_cmd import configure_logging

    serve_logger = logging.getLogger("tlkeras.serve")
    before = list(serve_logger.handlers)
    try:
        for _ in range(3):
            configure_logging()
        assert len(serve_logger.handlers) == len([h for h in before if h.get_name() != "tlkeras-serve-stderr"]) + 1
    finally:
        serve_logger.handlers[:] = before
