"""Audio: WAV decoding, resampling and fixed windows (one implementation, `audio_ops.wav_to_waveform`, used by
training pipelines and by the exported serving graph), file checks, and the `serving_default` signature on
encoded WAV bytes.

Every clip reaches a model as a float32 mono waveform in [-1, 1] at the backbone's sample rate, zero-padded
or trimmed to `clip_seconds`, shape (B, samples). Backbones compute their own features (log-mel) inside.
Files the graph cannot decode (FLAC, OGG, WAV that is not 16-bit PCM) are converted once to 16-bit WAV in
`$TLKERAS_HOME/converted/audio/`, keyed by their content, and the run says how many were converted.
"""

from __future__ import annotations

import os

import numpy as np

from tlkeras import files, paths
from tlkeras.errors import TlkerasError
from tlkeras.inputs import audio_ops, pipeline
from tlkeras.inputs.base import InputKind, InputSpec, check_files, first_few

SERVING_DEFAULT = "serving_default"
AUDIO_BYTES = "audio_bytes"
DEFAULT_SAMPLE_RATE = 16000
DEFAULT_CLIP_SECONDS = 30


def sine_wav(seconds: float, rate: int, frequency: float = 440.0) -> bytes:
    """bytes: a 16-bit PCM WAV of a sine tone, for warm-up requests and tests."""
    import tensorflow as tf

    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)[:, None]
    return tf.audio.encode_wav(tone, rate).numpy()


class AudioKind(InputKind):
    name = "audio"
    file_extensions = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")
    table_column = "path"
    spec_fields = ("sample_rate", "clip_seconds")

    def spec(self, entry, data) -> InputSpec:
        seconds = (getattr(data, "clip_seconds", None) if data is not None else None) or entry.clip_seconds \
            or DEFAULT_CLIP_SECONDS
        return InputSpec(self.name, sample_rate=int(entry.sample_rate or DEFAULT_SAMPLE_RATE),
                         clip_seconds=float(seconds))

    def parse_spec(self, raw) -> InputSpec:
        rate, seconds = raw.get("sample_rate"), raw.get("clip_seconds")
        if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
            raise TlkerasError(f"config.yaml 'input.sample_rate' must be a positive int (Hz). Received: {rate!r}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise TlkerasError(f"config.yaml 'input.clip_seconds' must be a positive number. Received: {seconds!r}")
        return InputSpec(self.name, sample_rate=rate, clip_seconds=float(seconds))

    def num_samples(self, spec: InputSpec) -> int:
        return int(round(spec.sample_rate * spec.clip_seconds))

    # ----------------------------------------------------------------------------------- checking
    def prepare_inputs(self, items):
        """(items, notes): files the graph cannot decode replaced by 16-bit WAV copies in the cache."""
        import soundfile

        converted, kept = [], []
        cache = paths.home() / "converted" / "audio"
        for item in items:
            try:
                info = soundfile.info(item)
            except Exception:  # undecodable: `check` reports it
                kept.append(item)
                continue
            if (info.format, info.subtype) == ("WAV", "PCM_16"):
                kept.append(item)
                continue
            target = cache / f"{files.sha256_file(item)}.wav"
            if not target.exists():
                waveform, rate = audio_ops.read_audio(item)
                with files.atomic_path(target) as tmp:
                    soundfile.write(str(tmp), waveform, rate, subtype="PCM_16", format="WAV")
            converted.append(item)
            kept.append(str(target))
        notes = [f"converted {len(converted)} audio files the graph cannot decode ({first_few(converted)}) to 16-bit WAV "
                 f"in {cache}"] if converted else []
        return kept, notes

    def check(self, items, skip):
        return check_files(items, audio_ops.audio_problem, "audio files cannot be trained on", skip)

    def fingerprint_item(self, item):
        try:
            stat = os.stat(item)
        except OSError as error:
            raise TlkerasError(f"audio file disappeared: {item} ({error.strerror})") from error
        return f"{item}\0{stat.st_size}\0{stat.st_mtime_ns}".encode("utf-8", "surrogatepass")

    def content_key(self, item):
        return files.sha256_file(item)

    # ---------------------------------------------------------------------------------- models
    def network_input(self, spec):
        import keras

        return keras.Input(shape=(None,), dtype="float32", name="audio")

    def feature_extractor(self, entry, network, spec):
        import keras

        if len(network.output.shape) == 2:  # the builder pooled already (Whisper pools over the audio frames)
            return network
        waveform = keras.Input(shape=(None,), dtype="float32", name="audio")
        from tlkeras.layers import TOKEN_POOLING

        pooled = TOKEN_POOLING["mean"](name="pool")(network(waveform))
        return keras.Model(waveform, pooled, name=entry.name)

    def dataset(self, inputs, targets, spec, batch_size, preprocessor=None, shuffle=False, seed=0, augment=None,
                repeat=False, first_epoch=None, view="identity"):
        import tensorflow as tf

        rate, samples = spec.sample_rate, self.num_samples(spec)
        paths = [str(p) for p in inputs]

        def batches(ds):
            read = lambda path: audio_ops.wav_to_waveform(tf.io.read_file(path), rate, samples)  # noqa: E731
            return pipeline.map_inputs(ds, read, targets is not None).batch(batch_size)

        if first_epoch is not None:
            return pipeline.finish(pipeline.epochs(paths, targets, seed, first_epoch, batches), targets is not None,
                                   augment)
        ds = pipeline.shuffled(pipeline.slices(paths, targets), len(inputs), shuffle, seed, repeat)
        return pipeline.finish(batches(ds), targets is not None, augment)

    # ---------------------------------------------------------------------------------- serving
    def signatures(self, model, spec, task, labels, threshold, preprocessor=None):
        import tensorflow as tf

        rate, samples = spec.sample_rate, self.num_samples(spec)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=AUDIO_BYTES)])
        def serve_audio(audio_bytes):
            waveforms = tf.map_fn(lambda wav: audio_ops.wav_to_waveform(wav, rate, samples), audio_bytes,
                                  fn_output_signature=tf.TensorSpec([samples], tf.float32))
            return task.postprocess(tf.cast(model(waveforms, training=False), tf.float32), labels, threshold)

        return {SERVING_DEFAULT: serve_audio}

    def warmup_inputs(self, spec):
        # Two rates, so the resampler's paths run too.
        clips = [sine_wav(1.0, 8000), sine_wav(0.5, 44100, 880.0)]
        return [(SERVING_DEFAULT, {AUDIO_BYTES: np.array(clips[:1], dtype=object)}),
                (SERVING_DEFAULT, {AUDIO_BYTES: np.array(clips, dtype=object)})]

    def preprocessing_description(self, spec, preprocessor=None):
        return (f"tf.audio.decode_wav (16-bit PCM, any channels and rate) -> mono mix -> band-limited resampling to "
                f"{spec.sample_rate} Hz -> zero-pad or trim to {spec.clip_seconds:g} s -> float32 in [-1, 1]; the "
                "model computes its features (log-mel) inside")

    def describe_example(self, item):
        return {"text": os.path.basename(item)}
