"""Few-shot accuracy against labels per class: scikit-learn's ten-line probe vs tlkeras's strategies.

Fashion-MNIST (grey 28x28 -> RGB, bilinear resize to the backbone's input size), tested on the first
`test_size` t10k images:
- `sklearn_reference`: `LogisticRegression()` with scikit-learn's defaults on EfficientNet-Lite0's frozen
  features, the ten lines a user could write;
- `probe`: tlkeras's probe head on the same features (`recipes.probe.fit_probe`: L-BFGS, L2 by 5-fold CV);
- `probe_flip` / `probe_ensemble_flip`: the probe trained on each image and its mirror and averaging both at
  test time (`augment: {flip: horizontal, tta: true}` on cached features), on Lite0 and on an ensemble of
  offline backbones (`backbone: [a, b]`): the best frozen-feature recipes tlkeras offers;
- `lp_ft` and `auto`: real `tlkeras train` runs (strategy fine_tuning, LP-FT by default; strategy auto),
  on the same samples written as PNG folders;
- `scratch`: the same architecture from random weights (`weight_init`) at 64 px.

Rotten Tomatoes (de-duplicated, plot summaries dropped), tested on `text_test` fixed reviews:
- `sklearn_reference` and `probe` on MiniLM-L6 mean-pooled embeddings (sequence length 128);
- `contrastive` (SetFit-style pairs, cosine loss, then the probe) and `auto`: real `tlkeras train` runs.

Feature-level rows share one extraction of the training pool and the test set per backbone (each image
once, in this process). Real runs go to `workers` processes in a fresh TLKERAS_HOME.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from bench.common import fresh_home

NAME = "data_efficiency"
TARGET = ("tlkeras probe >= scikit-learn probe - 0.5 points at every size; Fashion-MNIST 10/class >= 85% "
          "(best strategy, any offline backbone or ensemble); Rotten Tomatoes 32/class contrastive >= 72%; "
          "auto within 1 point of the best strategy at every size")
NO_CALLBACKS = {"checkpoint": False, "backup": False, "tensorboard": False, "progress": False}
LITE0 = "efficientnet_lite0_imagenet"
MINILM = "minilm_l6_v2"


def settings(quick: bool) -> dict:
    if quick:
        # One real run per dataset (the code paths, not the figures): auto is exercised by the unit tests.
        return dict(image_sizes=(2,), seeds=(0,), test_size=40, ensemble=(LITE0,), run_sizes=(2,), run_seeds=(0,),
                    ft_epochs=1, scratch_epochs=2, text_sizes=(4,), text_test=40, text_run_sizes=(4,),
                    contrastive_steps=4, text_seq=32, budget_minutes=2.0, text_budget_minutes=2.0, workers=2,
                    image_size=64,
                    image_methods=("lp_ft",), text_methods=("contrastive",))
    # Real training runs (LP-FT, auto, scratch, contrastive) cost 2-6 min each here, so they run at the sizes the
    # targets name (10/class images, 32/class texts) with 3 seeds; feature-level rows cover every size, 5 seeds.
    # `ensemble` names the backbones of the ensemble row (Lite2's extraction at 260 px doubles the feature phase).
    return dict(image_sizes=(1, 5, 10, 50), seeds=(0, 1, 2, 3, 4), test_size=2000,
                ensemble=(LITE0,), run_sizes=(10,), run_seeds=(0, 1, 2),
                ft_epochs=3, scratch_epochs=40, text_sizes=(8, 32, 128), text_test=2000, text_run_sizes=(32,),
                contrastive_steps=80, text_seq=64, budget_minutes=6.0, workers=2, image_size=None,
                # auto's text trials: the probe, LP-FT and 3-fold contrastive (estimated 13.7 min at 6 min: skipped)
                text_budget_minutes=15.0,
                image_methods=("lp_ft", "auto", "scratch"), text_methods=("contrastive", "auto"))


def run(quick: bool, workdir) -> dict:
    cfg = settings(quick)
    start = time.perf_counter()
    with fresh_home(workdir, "data_efficiency"):
        image = _fashion_features(cfg)
        text = _rotten_features(cfg)
        jobs = _fashion_jobs(cfg, workdir) + _rotten_jobs(cfg, workdir)
        for job, (score, seconds) in zip(jobs, _run_jobs(jobs, cfg["workers"]), strict=True):
            table = image if job["dataset"] == "fashion" else text
            table.setdefault(str(job["per_class"]), {}).setdefault(job["method"], []).append(score)
            print(f"[bench] data_efficiency {job['dataset']} {job['method']} {job['per_class']}/class seed "
                  f"{job['seed']}: {score:.3f} ({seconds:.0f} s)", flush=True)
    image, text = _summarise(image), _summarise(text)
    checks, causes = _targets(image, text, quick)
    met = None if quick else all(checks.values())
    return {"figures": {"fashion_mnist_accuracy": image, "rotten_tomatoes_accuracy": text, "targets": checks,
                        "seconds": round(time.perf_counter() - start, 1), **{k: v for k, v in cfg.items()}},
            "met": met, "summary": _summary_line(image, text), "cause": "; ".join(causes)}


# ------------------------------------------------------------------------------------------- features


def _sample(targets, per_class, seed):
    from tlkeras.datasets import _sample_per_class

    return _sample_per_class(targets, per_class, seed)


def _extract(name, images, size=None, flip=False):
    from types import SimpleNamespace

    from tlkeras import backbones
    from tlkeras.inputs.image import array_dataset

    backbone = backbones.build(name, data=SimpleNamespace(image_size=(size, size) if size else (),
                                                          sequence_length=None))
    pixels = images[:, :, ::-1] if flip else images
    ds = array_dataset(pixels, None, backbone.spec.image_size, 8)
    return np.asarray(backbone.extractor.predict(ds, verbose=0))


def _fashion_features(cfg) -> dict:
    from sklearn.linear_model import LogisticRegression

    from tlkeras.datasets import load_fashion_mnist_arrays
    from tlkeras.recipes.probe import fit_probe, predict

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist_arrays()
    x_test, y_test = x_test[: cfg["test_size"]], y_test[: cfg["test_size"]]
    samples = {(k, s): _sample(y_train, k, s) for k in cfg["image_sizes"] for s in cfg["seeds"]}
    pool = np.unique(np.concatenate(list(samples.values())))
    where = {int(i): n for n, i in enumerate(pool)}
    names = list(dict.fromkeys((LITE0, *cfg["ensemble"])))
    train_features = {(n, f): _extract(n, x_train[pool], cfg["image_size"], f) for n in names for f in (False, True)}
    test_features = {(n, f): _extract(n, x_test, cfg["image_size"], f) for n in names for f in (False, True)}
    table: dict = {}

    def score(fit, views):
        probabilities = np.mean([predict(fit, v, "classification") for v in views], axis=0)
        return float(np.mean(probabilities.argmax(1) == y_test))

    for (per_class, seed), indices in samples.items():
        rows = np.array([where[int(i)] for i in indices])
        y = y_train[indices]
        lite = train_features[(LITE0, False)][rows]
        row = table.setdefault(str(per_class), {})
        reference = LogisticRegression(max_iter=1000).fit(lite, y)
        row.setdefault("sklearn_reference", []).append(float(reference.score(test_features[(LITE0, False)], y_test)))
        row.setdefault("probe", []).append(score(fit_probe(lite, y, "classification", seed=seed),
                                                 [test_features[(LITE0, False)]]))
        both = np.concatenate([lite, train_features[(LITE0, True)][rows]])
        row.setdefault("probe_flip", []).append(score(
            fit_probe(both, np.concatenate([y, y]), "classification", seed=seed),
            [test_features[(LITE0, False)], test_features[(LITE0, True)]]))
        if len(cfg["ensemble"]) > 1:
            def joined(features, flip, rows_=None):
                parts = [features[(n, flip)] for n in cfg["ensemble"]]
                return np.concatenate([p[rows_] if rows_ is not None else p for p in parts], axis=1)

            train_e = np.concatenate([joined(train_features, False, rows), joined(train_features, True, rows)])
            fit = fit_probe(train_e, np.concatenate([y, y]), "classification", seed=seed)
            row.setdefault("probe_ensemble_flip", []).append(score(
                fit, [joined(test_features, False), joined(test_features, True)]))
    return table


def _rotten_features(cfg) -> dict:
    from sklearn.linear_model import LogisticRegression

    from tlkeras import backbones
    from tlkeras.datasets import _TEST_SEED, load_rotten_tomatoes
    from tlkeras.recipes.probe import fit_probe, predict

    frame = load_rotten_tomatoes()
    texts, labels = frame["text"].tolist(), (frame["label"] == "fresh").to_numpy().astype(np.int64)
    # The same test reviews and training samples as `tlkeras.datasets.rotten_tomatoes` writes for the runs.
    order = np.random.default_rng(_TEST_SEED).permutation(len(texts))
    test_rows, rest = np.sort(order[: cfg["text_test"]]), np.sort(order[cfg["text_test"]:])
    samples = {(k, s): rest[_sample(labels[rest], k, s)] for k in cfg["text_sizes"] for s in cfg["seeds"]}
    pool = np.unique(np.concatenate([test_rows, *samples.values()]))
    where = {int(i): n for n, i in enumerate(pool)}
    from types import SimpleNamespace

    backbone = backbones.build(MINILM, data=SimpleNamespace(image_size=(), sequence_length=128))
    ds = backbone.kind.dataset([texts[i] for i in pool], None, backbone.spec, 16, preprocessor=backbone.preprocessor)
    features = np.asarray(backbone.extractor.predict(ds, verbose=0))
    test = features[[where[int(i)] for i in test_rows]]
    table: dict = {}
    for (per_class, seed), indices in samples.items():
        x = features[[where[int(i)] for i in indices]]
        y = labels[indices]
        row = table.setdefault(str(per_class), {})
        row.setdefault("sklearn_reference", []).append(
            float(LogisticRegression(max_iter=1000).fit(x, y).score(test, labels[test_rows])))
        fit = fit_probe(x, y, "classification", seed=seed)
        row.setdefault("probe", []).append(float(np.mean(predict(fit, test, "classification").argmax(1)
                                                         == labels[test_rows])))
    return table


# ---------------------------------------------------------------------------------------------- runs


def _fashion_jobs(cfg, workdir) -> list[dict]:
    from tlkeras.datasets import fashion_mnist

    test = fashion_mnist(workdir / "data_eff" / "fm_test", train_per_class=1, test_size=cfg["test_size"])["test"]
    jobs = []
    size = [cfg["image_size"]] * 2 if cfg["image_size"] else []
    for per_class in cfg["run_sizes"]:
        for seed in cfg["run_seeds"]:
            train_dir = fashion_mnist(workdir / "data_eff" / f"fm_{per_class}_{seed}", train_per_class=per_class,
                                      test_size=1, seed=seed)["train"]
            data = {"train": str(train_dir), "test": str(test), "batch_size": 16, "validation_split": 0.2}
            base = {"backbone": LITE0, "seed": seed, "callbacks": NO_CALLBACKS}
            recipes = {
                "lp_ft": {**base, "data": {**data, "image_size": size} if size else data,
                          "schedule": {"strategy": "fine_tuning", "epochs": cfg["ft_epochs"], "learning_rate": 1e-3,
                                       "backbone_lr_multiplier": 0.1}},
                "auto": {**base, "data": {**data, "image_size": size} if size else data,
                         "schedule": {"strategy": "auto", "epochs": cfg["ft_epochs"], "learning_rate": 1e-3,
                                      "backbone_lr_multiplier": 0.1, "budget_minutes": cfg["budget_minutes"]}},
                "scratch": {**base, "backbone_weights": "random", "data": {**data, "image_size": [64, 64]},
                            "head": {"hidden_units": [128]},
                            "schedule": {"strategy": "weight_init", "epochs": cfg["scratch_epochs"],
                                         "learning_rate": 1e-3, "backbone_lr_multiplier": 1.0}},
            }
            for method, recipe in ((m, recipes[m]) for m in cfg["image_methods"]):
                recipe = {**recipe, "output_dir": str(workdir / "runs" / f"fm_{method}_{per_class}_{seed}")}
                jobs.append({"dataset": "fashion", "method": method, "per_class": per_class, "seed": seed,
                             "recipe": recipe})
    return jobs


def _rotten_jobs(cfg, workdir) -> list[dict]:
    from tlkeras.datasets import rotten_tomatoes

    jobs = []
    for per_class in cfg["text_run_sizes"]:
        for seed in cfg["run_seeds"]:
            data = rotten_tomatoes(workdir / "data_eff" / f"rt_{per_class}_{seed}", train_per_class=per_class,
                                   test_size=cfg["text_test"], seed=seed)
            common = {"backbone": MINILM, "seed": seed, "callbacks": NO_CALLBACKS,
                      "data": {"train": str(data["train"]), "test": str(data["test"]), "text_column": "text",
                               "sequence_length": cfg["text_seq"], "batch_size": 16}}
            schedule = {"contrastive_max_steps": cfg["contrastive_steps"], "epochs": 2,
                        "budget_minutes": cfg["text_budget_minutes"], "learning_rate": 1e-3,
                        "backbone_lr_multiplier": 0.02}
            for method in cfg["text_methods"]:  # the method is the strategy's name
                recipe = {**common, "schedule": {**schedule, "strategy": method},
                          "output_dir": str(workdir / "runs" / f"rt_{method}_{per_class}_{seed}")}
                jobs.append({"dataset": "rotten", "method": method, "per_class": per_class, "seed": seed,
                             "recipe": recipe})
    return jobs


def _run_jobs(jobs, workers) -> list[tuple[float, float]]:
    context = multiprocessing.get_context("spawn")  # a fresh TensorFlow per worker, never a forked one
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        return list(pool.map(_run_job, [job["recipe"] for job in jobs]))


def _init_worker(threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)


def _run_job(recipe: dict) -> tuple[float, float]:
    from tlkeras.recipes import parse_recipe, train

    start = time.perf_counter()
    metrics = train(parse_recipe(recipe), verbose=0).metrics
    return float(metrics["accuracy"]), time.perf_counter() - start


# ------------------------------------------------------------------------------------------- summary


def _summarise(table) -> dict:
    return {size: {method: {"mean": round(statistics.mean(v), 4),
                            "std": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0,
                            "runs": [round(x, 4) for x in v]}
                   for method, v in row.items()} for size, row in table.items()}


def _mean(table, size, method):
    return table.get(str(size), {}).get(method, {}).get("mean")


def _fmt(table, size, method) -> str:
    cell = table.get(str(size), {}).get(method)
    return f"{100 * cell['mean']:.1f} +/- {100 * cell['std']:.1f}%" if cell else "n/a"


STRATEGIES = {"fashion": ("probe", "probe_flip", "lp_ft", "auto"), "rotten": ("probe", "contrastive", "auto")}


def _targets(image, text, quick):
    checks, causes = {}, []
    for name, table in (("fashion", image), ("rotten", text)):
        for size, row in table.items():
            if "probe" in row and "sklearn_reference" in row:
                gap = row["probe"]["mean"] - row["sklearn_reference"]["mean"]
                checks[f"{name}_{size}_probe_vs_reference"] = gap >= -0.005
                if gap < -0.005:
                    causes.append(f"{name} {size}/class: probe {100 * gap:+.1f} points vs scikit-learn")
            if "auto" in row:
                best = max(row[m]["mean"] for m in STRATEGIES[name] if m in row)
                checks[f"{name}_{size}_auto_within_1_point"] = row["auto"]["mean"] >= best - 0.01
                if row["auto"]["mean"] < best - 0.01:
                    causes.append(f"{name} {size}/class: auto {100 * row['auto']['mean']:.1f}% vs best "
                                  f"{100 * best:.1f}%")
    best10 = max((v["mean"] for m, v in image.get("10", {}).items() if m != "sklearn_reference"), default=None)
    if best10 is not None:
        checks["fashion_10_at_least_85"] = best10 >= 0.85
        if best10 < 0.85:
            causes.append(f"Fashion-MNIST 10/class: best strategy {100 * best10:.1f}%, not 85%")
    contrastive32 = _mean(text, 32, "contrastive")
    if contrastive32 is not None:
        checks["rotten_32_contrastive_at_least_72"] = contrastive32 >= 0.72
        if contrastive32 < 0.72:
            causes.append(f"Rotten Tomatoes 32/class: contrastive {100 * contrastive32:.1f}%, not 72%")
    return checks, causes


def _summary_line(image, text) -> str:
    i, t = ("10" if "10" in image else next(iter(image), "")), ("32" if "32" in text else next(iter(text), ""))
    parts = [f"Fashion-MNIST {i}/class: " + ", ".join(f"{m} {_fmt(image, i, m)}" for m in image.get(i, {})),
             f"Rotten Tomatoes {t}/class: " + ", ".join(f"{m} {_fmt(text, t, m)}" for m in text.get(t, {}))]
    return "; ".join(parts)


def feature_rows(image_sizes, text_sizes) -> dict:
    """The feature-level rows alone (scikit-learn reference, probe, mirrored views) at some sizes, full-mode
    seeds and test sets, no training runs: `python -m bench.data_efficiency --image-sizes 10 --text-sizes 32`."""
    import tempfile
    from pathlib import Path

    cfg = {**settings(False), "image_sizes": tuple(image_sizes), "text_sizes": tuple(text_sizes)}
    with fresh_home(Path(tempfile.mkdtemp(prefix="data-efficiency-")), "data_efficiency"):
        image = _summarise(_fashion_features(cfg)) if image_sizes else {}
        text = _summarise(_rotten_features(cfg)) if text_sizes else {}
    return {"fashion_mnist_accuracy": image, "rotten_tomatoes_accuracy": text, "seeds": cfg["seeds"],
            "test_size": cfg["test_size"], "text_test": cfg["text_test"], "ensemble": cfg["ensemble"]}


def image_contrastive(seeds=(0, 1, 2), per_class: int = 10, test_size: int = 2000, steps: int = 160) -> dict:
    """Does SetFit-style contrastive tuning help an image backbone? `strategy: contrastive` against the probe on
    EfficientNet-Lite0, Fashion-MNIST at `per_class` labels/class, the same samples and test images (real
    `tlkeras train` runs, one at a time): `python -m bench.data_efficiency --image-contrastive`."""
    import tempfile
    from pathlib import Path

    from tlkeras.datasets import fashion_mnist

    workdir = Path(tempfile.mkdtemp(prefix="image-contrastive-"))
    rows: dict = {"probe": [], "contrastive": [], "contrastive_seconds": []}
    with fresh_home(workdir, "image_contrastive"):
        test = fashion_mnist(workdir / "fm_test", train_per_class=1, test_size=test_size)["test"]
        for seed in seeds:
            train_dir = fashion_mnist(workdir / f"fm_{seed}", train_per_class=per_class, test_size=1, seed=seed)["train"]
            for method in ("probe", "contrastive"):
                recipe = {"backbone": LITE0, "seed": seed, "callbacks": NO_CALLBACKS,
                          "data": {"train": str(train_dir), "test": str(test), "batch_size": 16},
                          "schedule": {"strategy": "feature_extraction" if method == "probe" else "contrastive",
                                       "contrastive_max_steps": steps},
                          "output_dir": str(workdir / "runs" / f"{method}_{seed}")}
                score, seconds = _run_job(recipe)
                rows[method].append(score)
                if method == "contrastive":
                    rows["contrastive_seconds"].append(round(seconds, 1))
                print(f"[bench] image contrastive seed {seed}: {method} {score:.4f} ({seconds:.0f} s)", flush=True)
    summary = {k: {"mean": round(statistics.mean(v), 4), "std": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0,
                   "runs": [round(x, 4) for x in v]} for k, v in rows.items() if k != "contrastive_seconds"}
    return {**summary, "contrastive_seconds": rows["contrastive_seconds"], "seeds": list(seeds),
            "per_class": per_class, "test_size": test_size, "steps": steps, "backbone": LITE0}


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=feature_rows.__doc__.splitlines()[0])
    parser.add_argument("--image-sizes", type=int, nargs="*", default=[10])
    parser.add_argument("--text-sizes", type=int, nargs="*", default=[32])
    parser.add_argument("--image-contrastive", action="store_true", help=image_contrastive.__doc__.splitlines()[0])
    args = parser.parse_args()
    if args.image_contrastive:
        print(json.dumps(image_contrastive(), indent=1))
    else:
        print(json.dumps(feature_rows(args.image_sizes, args.text_sizes), indent=1))
