import pickle
import zipfile

import numpy as np
import pytest

from tests.legacy_pth import FakeStorage, FakeTensor, lite_state_dict, write_legacy
from tlkeras import registry, weights
from tlkeras.backbones.efficientnet_lite import (
    convert_lite0_weights,
    convert_lite_weights,
    efficientnet_lite,
    efficientnet_lite0,
    lite_stages,
)
from tlkeras.errors import TlkerasError
from tlkeras.weights.converters.torch_legacy import load_state_dict


def test_torch_legacy_reads_offsets_strides_and_shared_storages(tmp_path, monkeypatch):
    base = np.arange(24, dtype=np.float32)
    shared = FakeStorage("1", base)
    counter = FakeStorage("2", np.array([7], dtype=np.int64))
    path = tmp_path / "legacy.pth"
    write_legacy(path, {
        "plain": FakeTensor(shared, 0, (2, 3, 4), (12, 4, 1)),
        "transposed": FakeTensor(shared, 0, (4, 6), (1, 4)),  # a .t() of a (6, 4) tensor
        "offset": FakeTensor(shared, 20, (4,), (1,)),
        "num_batches_tracked": FakeTensor(counter, 0, (), ()),
    }, monkeypatch)

    sd = load_state_dict(path)

    assert list(sd) == ["plain", "transposed", "offset", "num_batches_tracked"]
    np.testing.assert_array_equal(sd["plain"], base.reshape(2, 3, 4))
    np.testing.assert_array_equal(sd["transposed"], base.reshape(6, 4).T)
    np.testing.assert_array_equal(sd["offset"], base[20:24])
    assert sd["num_batches_tracked"].dtype == np.int64 and sd["num_batches_tracked"] == 7


def test_torch_legacy_rejects_zip_format(tmp_path):
    path = tmp_path / "new_format.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"not used")
    with pytest.raises(TlkerasError, match="legacy"):
        load_state_dict(path)


def test_torch_legacy_refuses_to_run_code_from_a_pickle(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({}, f, protocol=2)
        pickle.dump(Evil(), f, protocol=2)
    with pytest.raises(TlkerasError, match="print' is not allowed"):
        load_state_dict(path)
    assert "pwned" not in capsys.readouterr().out


# --- the model and the converter ---------------------------------------------------------------------

def test_builds_small_and_outputs_1280_features():
    model = efficientnet_lite0(input_shape=(64, 64, 3))
    features = model.predict(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), verbose=0)
    assert features.shape == (2, 1280)
    prefixes = ("stem_", "top_") + tuple(f"block{i}" for i in range(1, 8))
    assert all(layer.name.startswith(prefixes) for layer in model.layers)
    assert {"block2a_expand_conv", "block2b_dwconv", "block6d_project_bn", "block7a_dwconv"} <= {
        layer.name for layer in model.layers}


def test_with_top_has_the_reference_parameter_count():
    model = efficientnet_lite0(input_shape=(64, 64, 3), include_top=True)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 4_652_008
    assert model.count_params() == 4_694_024  # equals the torch file's float parameters and buffers
    assert model.output_shape == (None, 1000)


# The TF reference README's parameter counts (with the 1000-class head), in millions.
_README_PARAMS = {"lite0": 4.7, "lite1": 5.4, "lite2": 6.1, "lite3": 8.2, "lite4": 13.0}


@pytest.mark.parametrize("variant", sorted(_README_PARAMS))
def test_every_variant_has_the_reference_size_and_fixed_stem_and_head(variant):
    model = efficientnet_lite(variant, input_shape=(64, 64, 3), include_top=True)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert round(trainable / 1e6, 1) == _README_PARAMS[variant]
    assert model.get_layer("stem_conv").filters == 32 and model.get_layer("top_conv").filters == 1280
    assert not any("se_" in layer.name or "swish" in layer.name for layer in model.layers)
    stages = lite_stages(variant)
    assert stages[0].repeats == 1 and stages[-1].repeats == 1  # first and last stage are not deepened
    blocks = {layer.name[:7] for layer in model.layers if layer.name.startswith("block")}
    assert len(blocks) == sum(s.repeats for s in stages)


def test_lite2_matches_the_shipped_weights_shapes_and_default_resolution():
    # Repeats and widths of the Lite2 .pth (21 blocks; stage outputs 16..352), counted from the real file.
    assert [s.repeats for s in lite_stages("lite2")] == [1, 3, 3, 4, 4, 5, 1]
    assert [s.filters_out for s in lite_stages("lite2")] == [16, 24, 48, 88, 120, 208, 352]
    model = efficientnet_lite("lite2", include_top=True)
    assert model.input_shape == (None, 260, 260, 3) and model.name == "efficientnet_lite2"
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 6_092_072
    assert model.get_layer("top_dropout").rate == 0.3
    assert model.get_layer("block6e_dwconv").kernel.shape == (5, 5, 1248, 1)


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(TlkerasError, match="lite0, lite1, lite2, lite3, lite4. Received: variant='lite9'"):
        efficientnet_lite("lite9")


def test_convert_transposes_torch_layouts():
    model = efficientnet_lite0(input_shape=(32, 32, 3), include_top=True, classes=1000)
    sd = lite_state_dict(model, np.random.default_rng(0))
    assert len(sd) == 296  # same key count as the real file

    convert_lite0_weights(sd, model)

    stem = model.get_layer("stem_conv").kernel.numpy()
    assert stem[2, 1, 0, 5] == sd["_conv_stem.weight"][5, 0, 2, 1]
    dw = model.get_layer("block3a_dwconv").kernel.numpy()  # block 3 of lukemelas' _blocks
    assert dw.shape == (5, 5, 144, 1)
    assert dw[4, 0, 77, 0] == sd["_blocks.3._depthwise_conv.weight"][77, 0, 4, 0]
    np.testing.assert_array_equal(model.get_layer("predictions").kernel.numpy(), sd["_fc.weight"].T)
    bn = model.get_layer("block7a_project_bn")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), sd["_blocks.15._bn2.running_var"])
    np.testing.assert_array_equal(bn.gamma.numpy(), sd["_blocks.15._bn2.weight"])


def test_convert_without_top_ignores_fc_and_fails_loudly_on_bad_keys():
    top_model = efficientnet_lite0(input_shape=(32, 32, 3), include_top=True)
    sd = lite_state_dict(top_model, np.random.default_rng(1))
    model = efficientnet_lite0(input_shape=(32, 32, 3))
    convert_lite0_weights(sd, model)
    np.testing.assert_array_equal(model.get_layer("top_bn").beta.numpy(), sd["_bn1.bias"])

    missing = dict(sd)
    del missing["_blocks.7._expand_conv.weight"]
    with pytest.raises(TlkerasError, match=r"_blocks\.7\._expand_conv\.weight"):
        convert_lite0_weights(missing, model)

    wrong = dict(sd, **{"_conv_head.weight": np.zeros((1280, 320, 3, 3), "float32")})
    with pytest.raises(TlkerasError, match="_conv_head.weight"):
        convert_lite0_weights(wrong, model)

    with pytest.raises(TlkerasError, match="_blocks.16"):
        convert_lite0_weights(dict(sd, **{"_blocks.16._bn0.weight": np.ones(8, "float32")}), model)


def test_weights_of_another_variant_are_refused():
    lite2_sd = lite_state_dict(efficientnet_lite("lite2", input_shape=(32, 32, 3), include_top=True),
                                     np.random.default_rng(2))
    with pytest.raises(TlkerasError, match="Shape mismatch|no place in the model"):
        convert_lite_weights(lite2_sd, efficientnet_lite0(input_shape=(32, 32, 3)))
    assert convert_lite0_weights is convert_lite_weights


# --- real ImageNet weights ---------------------------------------------------------------------------

def _preprocess(image):
    import keras

    h, w, _ = image.shape
    side = round(min(h, w) * 0.875)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top:top + side, left:left + side].astype("float32")[None]
    resized = keras.ops.image.resize(crop, (224, 224), interpolation="bilinear", antialias=True)
    return (keras.ops.convert_to_numpy(resized) - 127.0) / 128.0


@pytest.mark.slow
def test_real_imagenet_weights_classify_sample_images():
    from keras_hub.utils import decode_imagenet_predictions
    from sklearn.datasets import load_sample_image

    entry = registry.get("efficientnet_lite0_imagenet")
    path = weights.package_dir(entry) / entry.weights_path
    if not path.is_file():
        pytest.skip(f"EfficientNet-Lite0 weights not fetched: run `tlkeras fetch {entry.name}`")
    model = efficientnet_lite0(include_top=True)
    convert_lite0_weights(load_state_dict(path), model)

    images = np.concatenate([_preprocess(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")])
    china, flower = decode_imagenet_predictions(model.predict(images, verbose=0), top=5)

    china_names = [name for name, _ in china]
    assert china_names[0] == "palace"
    assert {"palace", "bell_cote", "monastery"} <= set(china_names)
    assert flower[0][0] == "daisy"
