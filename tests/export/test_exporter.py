"""tlkeras.export: run directory -> TF Serving SavedModel, and the deploy configs.

Tiny models (16x16 images, an 8-token text model with a 12-word vocabulary) keep each export near a second.
"""

import io
import json
import re
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner
from google.protobuf import text_format
from PIL import Image
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from tlkeras.cli.app import main
from tlkeras.errors import TlkerasError
from tlkeras.export import deploy, export_model, export_run
from tlkeras.export.saved_model import write_version

SIZE = (16, 16)
LABELS = ["cat", "dog", "fox"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "dog", "##s"]
TEXT_OPS = {"CaseFoldUTF8", "FastWordpieceTokenizeWithOffsets", "RegexSplitWithOffsets", "TFText>RoundRobinTrim"}


# --- fake run directories ------------------------------------------------------------------------------

def _image_model(outputs=3, activation="softmax"):
    keras.utils.set_random_seed(0)
    pixels = keras.Input((*SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(pixels)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(pixels, keras.layers.Dense(outputs, activation=activation)(x))


def _text_model(outputs=3):
    keras.utils.set_random_seed(0)
    token_ids = keras.Input((8,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((8,), dtype="int32", name="padding_mask")
    x = keras.layers.Embedding(len(VOCAB), 4)(token_ids)
    x = keras.layers.GlobalAveragePooling1D()(x, mask=padding_mask)
    # A big bias spread makes some labels pass the 0.5 threshold and others not.
    head = keras.layers.Dense(outputs, activation="sigmoid", bias_initializer=keras.initializers.Constant(0.0))
    model = keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, head(x))
    head.bias.assign([3.0, -3.0, 3.0])
    return model


def _tokenizer():
    import keras_hub

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True)
    return keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)


def _write_run(run_dir, model, task, labels, input_spec, **extra):
    run_dir.mkdir(parents=True)
    model.save(run_dir / "model.keras")
    config = {"task": task, "backbone": extra.pop("backbone", "efficientnet_lite0_imagenet"), "input": input_spec}
    config.update(extra)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "labels.json").write_text(json.dumps(labels))
    return run_dir


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("image")
    model = _image_model()
    run = _write_run(root / "run", model, "classification", LABELS, {"kind": "image", "image_size": list(SIZE)})
    (run / "metrics.json").write_text(json.dumps({"accuracy": 0.75}))
    (run / "data_fingerprint.txt").write_text("sha256:abc123\n")
    path = export_run(run, root / "models", "pets", tflite=True)
    return {"root": root, "run": run, "model": model, "path": path,
            "loaded": tf.saved_model.load(str(path))}


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    model = _text_model()
    run = _write_run(root / "run", model, "multilabel", ["a", "b", "c"], {"kind": "text", "sequence_length": 8},
                     backbone="minilm_l6_v2")
    tokenizer = _tokenizer()
    with pytest.MonkeyPatch.context() as patch:
        from tlkeras import backbones

        patch.setattr(backbones, "load_preprocessor", lambda name, length: tokenizer)
        result = CliRunner().invoke(main, ["export", str(run), "--base-dir", str(root / "models"),
                                           "--name", "tags"])
    assert result.exit_code == 0, result.output
    path = root / "models" / "tags" / "1"
    return {"model": model, "tokenizer": tokenizer, "path": path, "output": result.output,
            "loaded": tf.saved_model.load(str(path))}


def _encode(image, fmt, mode=None):
    buffer = io.BytesIO()
    picture = Image.fromarray(image)
    (picture.convert(mode) if mode else picture).save(buffer, format=fmt)
    return buffer.getvalue()


def _resized(image):
    return tf.image.resize(image, SIZE, method="bilinear", antialias=False).numpy()


# --- layout and versions --------------------------------------------------------------------------------

def test_export_writes_tf_serving_layout(image_export):
    path = image_export["path"]
    assert path == image_export["root"] / "models" / "pets" / "1"
    for name in ["saved_model.pb", "variables/variables.index", "assets.extra/labels.json",
                 "assets.extra/model_card.json", "assets.extra/tf_serving_warmup_requests",
                 "assets.extra/model.tflite"]:
        assert (path / name).is_file(), name
    assert json.loads((path / "assets.extra/labels.json").read_text()) == LABELS
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".tmp")] == []


def test_each_weight_is_stored_once(image_export, text_export):
    for export in (image_export, text_export):
        reader = tf.train.load_checkpoint(str(export["path"] / "variables" / "variables"))
        stored = sum(int(np.prod(shape)) for key, shape in reader.get_variable_to_shape_map().items()
                     if key != "_CHECKPOINTABLE_OBJECT_GRAPH")
        assert stored == export["model"].count_params()


def test_versions_increment_and_existing_version_is_refused(image_export, tmp_path):
    base = tmp_path / "models"
    (base / "pets" / "7").mkdir(parents=True)
    (base / "pets" / ".tmp-stale").mkdir()  # not a version: ignored when numbering
    assert export_run(image_export["run"], base, "pets") == base / "pets" / "8"
    with pytest.raises(TlkerasError, match="version 8 already exists"):
        export_run(image_export["run"], base, "pets", version=8)


def test_failed_write_leaves_no_version_and_no_temp_folder(tmp_path):
    def broken(tmp_dir, version):
        (tmp_dir / "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_version(tmp_path / "m", broken)
    assert sorted(p.name for p in (tmp_path / "m").iterdir() if not p.name.startswith(".export")) == []


def test_concurrent_exports_get_distinct_versions(tmp_path):
    def slow(tmp_dir, version):
        time.sleep(0.05)
        (tmp_dir / "saved_model.pb").write_text(str(version))

    paths = []
    threads = [threading.Thread(target=lambda: paths.append(write_version(tmp_path / "m", slow)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in paths) == ["1", "2", "3"]
    assert all((p / "saved_model.pb").read_text() == p.name for p in paths)


# --- image signatures -----------------------------------------------------------------------------------

def test_image_signatures_and_named_outputs(image_export):
    signatures = image_export["loaded"].signatures
    assert set(signatures) == {"serving_default", "serving_images"}
    default = signatures["serving_default"]
    assert list(default.structured_input_signature[1]) == ["image_bytes"]
    assert set(default.structured_outputs) == {"probabilities", "class_id", "label"}
    images = signatures["serving_images"].structured_input_signature[1]["images"]
    assert images.dtype == tf.uint8 and images.shape.as_list() == [None, *SIZE, 3]


def test_serving_images_matches_keras_model(image_export):
    pixels = np.random.default_rng(1).integers(0, 256, (4, *SIZE, 3), dtype=np.uint8)
    served = image_export["loaded"].signatures["serving_images"](images=tf.constant(pixels))
    expected = image_export["model"](pixels.astype("float32")).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(served["class_id"].numpy(), expected.argmax(-1))
    assert [s.decode() for s in served["label"].numpy()] == [LABELS[i] for i in expected.argmax(-1)]


def test_png_bytes_of_any_size_match_keras_model_on_resized_pixels(image_export):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(24, 20, 3), (16, 16, 3), (9, 31, 3)]]
    served = image_export["loaded"].signatures["serving_default"](
        image_bytes=tf.constant([_encode(image, "PNG") for image in images]))
    expected = image_export["model"](np.stack([_resized(image) for image in images])).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)


def test_serving_default_decodes_grey_rgba_gif_bmp_webp_and_jpeg(image_export):
    rgb = np.random.default_rng(3).integers(0, 256, (20, 12, 3), dtype=np.uint8)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    encoded = [_encode(grey, "PNG"), _encode(rgb, "PNG", "RGBA"), _encode(rgb, "GIF"), _encode(rgb, "BMP"),
               _encode(rgb, "JPEG"), _encode(rgb, "WEBP", "RGB")]
    served = image_export["loaded"].signatures["serving_default"](image_bytes=tf.constant(encoded))
    probabilities = served["probabilities"].numpy()
    assert probabilities.shape == (6, 3)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    model = image_export["model"]
    grey_rgb = np.repeat(grey[..., None], 3, axis=-1)
    np.testing.assert_allclose(probabilities[0], model(_resized(grey_rgb)[None]).numpy()[0], atol=1e-5)
    np.testing.assert_allclose(probabilities[1], model(_resized(rgb)[None]).numpy()[0], atol=1e-5)  # alpha dropped
    np.testing.assert_allclose(probabilities[3], probabilities[1], atol=1e-5)  # BMP is lossless too


def test_serving_default_rejects_bytes_that_are_not_an_image(image_export):
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        image_export["loaded"].signatures["serving_default"](image_bytes=tf.constant([b"not an image"]))


# --- assets ---------------------------------------------------------------------------------------------

def test_warmup_requests_replay_against_the_signatures(image_export):
    path, loaded = image_export["path"], image_export["loaded"]
    records = list(tf.data.TFRecordDataset(str(path / "assets.extra/tf_serving_warmup_requests")))
    assert 0 < len(records) <= 1000
    signatures_seen = set()
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert request.model_spec.name == "pets"
        inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert outputs["probabilities"].shape[0] == next(iter(inputs.values())).shape[0]
        signatures_seen.add(request.model_spec.signature_name)
    assert signatures_seen == {"serving_default", "serving_images"}


def test_model_card_records_provenance(image_export):
    card = json.loads((image_export["path"] / "assets.extra/model_card.json").read_text())
    assert card["name"] == "pets" and card["version"] == 1 and card["task"] == "classification"
    assert card["backbone"]["name"] == "efficientnet_lite0_imagenet"
    assert card["backbone"]["registry"]["license"] == card["license"] == "Apache-2.0"
    assert card["input"] == {"kind": "image", "image_size": list(SIZE)} and "input" not in card["recipe"]
    assert card["metrics"] == {"accuracy": 0.75}
    assert card["data_fingerprint"] == "sha256:abc123"
    assert card["labels"] == LABELS
    assert card["custom_ops"] == []
    assert card["versions"]["tensorflow"] == tf.__version__ and card["versions"]["keras"] == keras.__version__
    assert card["exported_at"].endswith("+00:00")
    assert card["signatures"]["serving_images"]["inputs"]["images"]["shape"] == [None, *SIZE, 3]


def test_tflite_matches_keras_model(image_export):
    interpreter = tf.lite.Interpreter(model_path=str(image_export["path"] / "assets.extra/model.tflite"))
    interpreter.allocate_tensors()
    pixels = np.random.default_rng(4).uniform(0, 255, (1, *SIZE, 3)).astype("float32")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
    interpreter.invoke()
    result = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(result, image_export["model"](pixels).numpy(), atol=1e-5)


# --- other tasks ----------------------------------------------------------------------------------------

def test_regression_exports_predictions(tmp_path):
    model = _image_model(outputs=2, activation=None)
    path = export_model(model, tmp_path, "price", task="regression", labels=[],
                        input_spec={"kind": "image", "image_size": list(SIZE)})
    pixels = np.random.default_rng(5).integers(0, 256, (3, *SIZE, 3), dtype=np.uint8)
    served = tf.saved_model.load(str(path)).signatures["serving_images"](images=tf.constant(pixels))
    assert list(served) == ["predictions"]
    np.testing.assert_allclose(served["predictions"].numpy(), model(pixels.astype("float32")).numpy(), atol=1e-5)




def test_text_export_tokenizes_in_graph_and_matches_keras(text_export):
    texts = ["the cat sat", "dogs on the mat", "unknown words only"]
    served = text_export["loaded"].signatures["serving_default"](text=tf.constant(texts))
    tokens = text_export["tokenizer"](tf.constant(texts))
    expected = text_export["model"]({"token_ids": tokens["token_ids"],
                                     "padding_mask": tf.cast(tokens["padding_mask"], "int32")}).numpy()
    np.testing.assert_allclose(served["scores"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(served["predicted"].numpy(), expected >= 0.5)
    assert [s.decode() for s in served["label"].numpy()] == ["a,c"] * 3


def test_text_export_reports_tensorflow_text_ops(text_export):
    card = json.loads((text_export["path"] / "assets.extra/model_card.json").read_text())
    assert TEXT_OPS <= set(card["custom_ops"])
    assert "tensorflow-text" in card["serving_requirements"]
    assert card["threshold"] == 0.5 and card["backbone"]["name"] == "minilm_l6_v2"
    assert "serving_default: text -> scores, predicted, label" in text_export["output"]
    assert "warning: tags/1 needs ops outside core TensorFlow (CaseFoldUTF8," in text_export["output"]


# --- bad input ------------------------------------------------------------------------------------------

def test_missing_run_files_name_the_fix(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("task: classification\n")
    with pytest.raises(TlkerasError, match="lacks labels.json, model.keras; train to completion"):
        export_run(tmp_path / "run", tmp_path / "models", "x")


@pytest.mark.parametrize("change, message", [
    ({"task": "detection"}, "unknown task: use one of classification, multilabel, regression"),
    ({"input": {"kind": "video"}}, "'input' must be"),
    ({"input": {"kind": "image", "image_size": [16]}}, "image_size' must be \\[height, width\\]"),
])
def test_bad_config_is_one_line_error(image_export, tmp_path, change, message):
    run = tmp_path / "run"
    run.mkdir()
    for name in ["model.keras", "labels.json"]:
        (run / name).write_bytes((image_export["run"] / name).read_bytes())
    config = yaml.safe_load((image_export["run"] / "config.yaml").read_text()) | change
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["export", str(run), "--base-dir", str(tmp_path / "models")])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert re.search(message, result.output)
    assert not (tmp_path / "models").exists()


def test_labels_must_match_model_outputs(tmp_path):
    with pytest.raises(TlkerasError, match="model has 3 outputs but labels.json lists 2 names"):
        export_model(_image_model(), tmp_path, "x", task="classification", labels=["a", "b"],
                     input_spec={"kind": "image", "image_size": list(SIZE)})


def test_image_size_must_match_model_input(tmp_path):
    with pytest.raises(TlkerasError, match="model input is 16x16 but input.image_size is 32x32"):
        export_model(_image_model(), tmp_path, "x", task="classification", labels=LABELS,
                     input_spec={"kind": "image", "image_size": [32, 32]})


# --- deploy configs -------------------------------------------------------------------------------------

def _fake_models(base):
    for name, versions in {"pets": [1, 2, 3], "tags": [5]}.items():
        for version in versions:
            (base / name / str(version)).mkdir(parents=True)
            (base / name / str(version) / "saved_model.pb").write_bytes(b"")
    (base / "pets" / "4").mkdir()  # no saved_model.pb: not a version yet
    (base / "pets" / ".tmp-abc").mkdir()
    return base


def test_deploy_config_parses_back_with_the_protos(tmp_path):
    models = _fake_models(tmp_path / "models")
    result = CliRunner().invoke(main, ["deploy-config", str(models), "--out", str(tmp_path / "conf"),
                                       "--batch-threads", "2"])
    assert result.exit_code == 0, result.output
    assert "pets: serving versions 2, 3 (latest), stable -> 3" in result.output

    config = text_format.Parse((tmp_path / "conf" / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    by_name = {c.name: c for c in config.model_config_list.config}
    assert set(by_name) == {"pets", "tags"}
    assert by_name["pets"].base_path == "/models/pets" and by_name["pets"].model_platform == "tensorflow"
    assert by_name["pets"].model_version_policy.latest.num_versions == 2
    assert dict(by_name["pets"].version_labels) == {"stable": 3}
    assert dict(by_name["tags"].version_labels) == {"stable": 5}

    batching = text_format.Parse((tmp_path / "conf" / "batching_parameters.txt").read_text(),
                                 deploy.batching_parameters_class()())
    assert batching.max_batch_size.value == 32 and batching.num_batch_threads.value == 2
    assert batching.batch_timeout_micros.value > 0 and batching.max_enqueued_batches.value > 0


@pytest.mark.parametrize("policy, check", [
    ("all", lambda p: p.HasField("all")),
    ("specific", lambda p: list(p.specific.versions) == [2, 3]),
])
def test_deploy_config_other_policies(tmp_path, policy, check):
    models = _fake_models(tmp_path / "models")
    config_path, _ = deploy.write_deploy_config(models, policy=policy)
    assert config_path == models / "models.config"
    config = text_format.Parse(config_path.read_text(), model_server_config_pb2.ModelServerConfig())
    assert check(config.model_config_list.config[0].model_version_policy)


def test_deploy_config_stable_pin_rolls_back_and_must_be_loaded(tmp_path):
    models = _fake_models(tmp_path / "models")
    result = CliRunner().invoke(main, ["deploy-config", str(models), "--stable", "pets=2"])
    assert result.exit_code == 0 and "stable -> 2" in result.output
    config = text_format.Parse((models / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    assert dict(config.model_config_list.config[0].version_labels) == {"stable": 2}
    result = CliRunner().invoke(main, ["deploy-config", str(models), "--stable", "pets=1"])
    assert result.exit_code == 2 and "stable version 1 of 'pets' would not be loaded" in result.output


def test_deploy_config_without_models_names_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["deploy-config", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "run `tlkeras export RUN_DIR" in result.output


def test_deploy_config_of_a_real_export(image_export, tmp_path):
    config_path, _ = deploy.write_deploy_config(image_export["root"] / "models", tmp_path, mount="/srv/models")
    config = text_format.Parse(config_path.read_text(), model_server_config_pb2.ModelServerConfig())
    assert [(c.name, c.base_path, dict(c.version_labels)) for c in config.model_config_list.config] == [
        ("pets", "/srv/models/pets", {"stable": 1})]
