"""Audio in, 16 kHz mono waveform out: WAV decoding, mixing, band-limited resampling and fixed-length
windows in TensorFlow ops (no Python callbacks, so they run in `tf.data` and inside an exported
SavedModel), plus a Python-side reader for the files TensorFlow cannot decode, and a file check.

What decodes where:
- in the graph (`decode_wav`, `wav_to_waveform`, the serving signature): WAV with 16-bit PCM samples, any
  channel count, any sample rate. That is all `tf.audio.decode_wav` reads: 8-, 24- and 32-bit integer
  PCM and float WAV fail in it.
- in Python (`read_audio`, `load_audio`, for training data): whatever libsndfile reads (the `soundfile`
  wheel bundles it): FLAC, OGG/Vorbis, WAV of any bit depth or float, AIFF, ... Convert such files to
  16-bit WAV to send them to a served model.

TensorFlow is imported inside the functions, so importing this module stays light.

Example:
>>> waveform = wav_to_waveform(tf.io.read_file("speech.wav"), sample_rate=16000, num_samples=16000 * 30)
>>> waveform.shape
TensorShape([480000])
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tlkeras.errors import TlkerasError

SAMPLE_RATE = 16000
MAX_PHASES = 4096  # resampling ratios up/down (in lowest terms) with more output phases are refused
SILENCE_PEAK = 1e-4  # a file whose largest |sample| is below this (about -80 dBFS) counts as silent


def decode_wav(contents):
    """Decodes 16-bit PCM WAV bytes.

    Args:
        contents: tf.string scalar. The bytes of a WAV file.

    Returns:
        `(samples, sample_rate)`: float32 (N, channels) in [-1, 1], and an int32 scalar.
    """
    import tensorflow as tf

    samples, rate = tf.audio.decode_wav(contents)
    return samples, rate


def to_mono(samples):
    """tf.Tensor: (N, channels) -> (N,), the mean of the channels."""
    import tensorflow as tf

    return tf.reduce_mean(tf.convert_to_tensor(samples, tf.float32), axis=-1)


def pad_or_trim(waveform, num_samples: int):
    """Zero-pads or trims the last axis of `waveform` to `num_samples`.

    Args:
        waveform: (N,) or (B, N) float tensor.
        num_samples: int. The length to return.

    Example:
    >>> pad_or_trim(tf.ones(3), 5).numpy()
    array([1., 1., 1., 0., 0.], dtype=float32)
    """
    import tensorflow as tf

    waveform = tf.convert_to_tensor(waveform, tf.float32)[..., :num_samples]
    missing = num_samples - tf.shape(waveform)[-1]
    paddings = tf.concat([tf.zeros([tf.rank(waveform) - 1, 2], tf.int32), [[0, missing]]], axis=0)
    padded = tf.pad(waveform, paddings)
    return tf.ensure_shape(padded, [*waveform.shape[:-1], num_samples])


def _gcd(a, b):
    import tensorflow as tf

    _, g = tf.while_loop(lambda x, y: tf.not_equal(x, 0), lambda x, y: (tf.math.floormod(y, x), x), (b, a))
    return g


def resample(waveform, rate_in, rate_out: int = SAMPLE_RATE, zero_crossings: int = 32, rolloff: float = 0.92,
             beta: float = 8.0):
    """Band-limited resampling by a windowed-sinc polyphase filter, in TensorFlow ops.

    The rate ratio is reduced to up/down in lowest terms (44100 -> 16000 is 160/441). Output sample n
    sits at input time n * down / up and is a Kaiser-windowed sinc interpolation of the input around
    it, with the cutoff at `rolloff` times the lower of the two Nyquist frequencies, so downsampling
    low-passes first and does not alias. The `up` distinct filter phases are one convolution over
    blocks of `down` input samples, so memory stays proportional to the audio. The rates may be tensors
    (read from a file in the graph); equal rates return the input unchanged.

    Args:
        waveform: (N,) or (B, N) float tensor (all rows at one rate).
        rate_in: int or int scalar tensor. The input sample rate in Hz.
        rate_out: int or int scalar tensor. The output rate. Defaults to 16000.
        zero_crossings: int. Half-length of the filter in zero crossings of the sinc; more is a
            sharper cutoff. Defaults to 32.
        rolloff: float. Cutoff as a fraction of the lower Nyquist frequency. Defaults to 0.92 (7.36 kHz
            at 16 kHz; the transition band is about +-8% around it).
        beta: float. Kaiser window shape: about 80 dB stopband at 8. Defaults to 8.0.

    Returns:
        float32 with the last axis of length ceil(N * rate_out / rate_in).

    Raises:
        tf.errors.InvalidArgumentError: for a non-positive rate, or a ratio needing more than
            `MAX_PHASES` filter phases (e.g. 16001 Hz); resample such files offline first.

    Example:
    >>> resample(tf.zeros(44100), 44100).shape
    TensorShape([16000])
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(waveform, tf.float32)
    batched = x.shape.rank == 2
    if not batched:
        x = x[None, :]
    rate_in = tf.cast(rate_in, tf.int64)
    rate_out = tf.cast(rate_out, tf.int64)
    checks = [tf.debugging.assert_positive(rate_in, message="resample: the input sample rate must be > 0"),
              tf.debugging.assert_positive(rate_out, message="resample: the output sample rate must be > 0")]
    with tf.control_dependencies(checks):
        common = _gcd(rate_in, rate_out)
    up, down = rate_out // common, rate_in // common
    limit = tf.debugging.assert_less_equal(
        up, tf.constant(MAX_PHASES, tf.int64),
        message=f"resample: this rate ratio needs more than {MAX_PHASES} filter phases; resample the file "
                "to a common rate (16000, 22050, 44100, 48000 Hz) first")
    with tf.control_dependencies([limit]):
        y = tf.cond(tf.equal(up, down), lambda: tf.identity(x),
                    lambda: _polyphase(x, up, down, zero_crossings, rolloff, beta))
    return y if batched else y[0]


def _polyphase(x, up, down, zero_crossings, rolloff, beta):
    import tensorflow as tf

    length = tf.cast(tf.shape(x)[1], tf.int64)
    cutoff = tf.minimum(tf.constant(1.0, tf.float64), tf.cast(up, tf.float64) / tf.cast(down, tf.float64)) * rolloff
    half = tf.cast(tf.math.ceil(zero_crossings / cutoff), tf.int64)  # filter half-width in input samples
    blocks = 1 + (2 * half + down - 1) // down  # input blocks of `down` samples one output block reads
    # kernel[i, p]: the weight of input sample i of a window for output phase p, at distance d from it.
    i = tf.range(blocks * down, dtype=tf.float64)[:, None]
    p = tf.range(up, dtype=tf.float64)[None, :]
    d = p * tf.cast(down, tf.float64) / tf.cast(up, tf.float64) + tf.cast(half - 1, tf.float64) - i
    ratio = d / tf.cast(half, tf.float64)
    inside = tf.abs(ratio) < 1.0
    window = tf.math.bessel_i0(beta * tf.sqrt(tf.maximum(1.0 - ratio * ratio, 0.0))) / tf.math.bessel_i0(
        tf.constant(beta, tf.float64))
    arg = cutoff * d
    sinc = tf.where(tf.equal(arg, 0.0), tf.ones_like(arg), tf.sin(math.pi * arg) / (math.pi * tf.where(
        tf.equal(arg, 0.0), tf.ones_like(arg), arg)))
    kernel = tf.where(inside, cutoff * sinc * window, tf.zeros_like(d))
    kernel = kernel / tf.reduce_sum(kernel, axis=0, keepdims=True)  # unit DC gain in every phase
    kernel = tf.cast(tf.reshape(kernel, [blocks, down, up]), tf.float32)

    out_length = (length * up + down - 1) // down
    frames = (out_length + up - 1) // up
    padded = (frames + blocks - 1) * down
    x = tf.pad(x, [[0, 0], [half - 1, padded - length - (half - 1)]])
    x = tf.reshape(x, tf.stack([tf.shape(x, out_type=tf.int64)[0], frames + blocks - 1, down]))
    y = tf.nn.conv1d(x, kernel, stride=1, padding="VALID")  # (B, frames, up): output phase p of frame q
    return tf.reshape(y, [tf.shape(y)[0], -1])[:, :out_length]


def wav_to_waveform(contents, sample_rate: int = SAMPLE_RATE, num_samples: int | None = None):
    """WAV bytes -> mono float32 waveform at `sample_rate`, padded or trimmed to `num_samples`.

    The whole audio front end of a serving signature or a `tf.data` map over WAV files.

    Args:
        contents: tf.string scalar. A 16-bit PCM WAV file.
        sample_rate: int. The rate to resample to. Defaults to 16000.
        num_samples: int. Zero-pad or trim to this length; None keeps the resampled length.
            Defaults to None.

    Example:
    >>> ds = tf.data.Dataset.from_tensor_slices(paths).map(
    ...     lambda p: wav_to_waveform(tf.io.read_file(p), num_samples=480000))
    """
    samples, rate = decode_wav(contents)
    waveform = resample(to_mono(samples), rate, sample_rate)
    return waveform if num_samples is None else pad_or_trim(waveform, num_samples)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Reads an audio file in Python (FLAC, WAV of any encoding, OGG, AIFF, ...) with soundfile.

    Args:
        path: str or Path. The file.

    Returns:
        `(waveform, sample_rate)`: float32 mono (N,) in [-1, 1] at the file's own rate.

    Raises:
        TlkerasError: when the file cannot be decoded.
    """
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile reports every problem as one error type or another
        raise TlkerasError(f"cannot decode {path} ({type(error).__name__}: {error}); check or convert the "
                           "file") from None
    return samples.mean(axis=1, dtype=np.float32), int(rate)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, num_samples: int | None = None) -> np.ndarray:
    """np.ndarray: A file read by `read_audio`, resampled by `resample` and padded or trimmed like the graph."""
    waveform, rate = read_audio(path)
    waveform = resample(waveform, rate, sample_rate)
    if num_samples is not None:
        waveform = pad_or_trim(waveform, num_samples)
    return np.asarray(waveform)


def audio_problem(path: str | Path, silence_peak: float = SILENCE_PEAK, in_graph: bool = False) -> str | None:
    """Why an audio file cannot be trained on, or None when it can.

    Args:
        path: str or Path. The file.
        silence_peak: float. A file whose largest |sample| is below this counts as silent.
            Defaults to 1e-4 (about -80 dBFS).
        in_graph: bool. Also require what the serving graph decodes (16-bit PCM WAV). Defaults to False.

    Returns:
        None, or a reason starting with "undecodable", "empty", "corrupt", "silent" or "not 16-bit PCM WAV".

    Example:
    >>> audio_problem("clip.flac", in_graph=True)
    'not 16-bit PCM WAV (FLAC/PCM_16): tf.audio.decode_wav cannot read it; convert it to 16-bit WAV'
    """
    import soundfile

    try:
        info = soundfile.info(str(path))
        samples, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # whatever libsndfile cannot read is undecodable
        return f"undecodable: {type(error).__name__}: {error}"
    if samples.size == 0:
        return "empty: no samples"
    if not np.all(np.isfinite(samples)):
        return "corrupt: non-finite samples"
    peak = float(np.max(np.abs(samples)))
    if peak == 0.0:
        return "silent: every sample is zero"
    if peak < silence_peak:
        return f"silent: peak {peak:.2g} is below {silence_peak:g}"
    if in_graph and (info.format, info.subtype) != ("WAV", "PCM_16"):
        return (f"not 16-bit PCM WAV ({info.format}/{info.subtype}): tf.audio.decode_wav cannot read it; "
                "convert it to 16-bit WAV")
    return None
