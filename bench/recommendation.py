"""`tlkeras recommend`: what it costs, and whether its ranking predicts the trained ranking.

- cost: `recommend` over every offline image backbone on 500 Fashion-MNIST training images (features from a
  cold per-example cache, the cross-validated probe, LogME and the latency measurements), with the time
  split per candidate. Target: at most 5 minutes on this 2-core machine.
- quality, on Fashion-MNIST at 10 labels/class, Rotten Tomatoes at 32 labels/class and the synthetic spoken
  digits at 4 clips/class (held-out voices): on each of `seeds` training samples, `recommend` ranks the
  candidates on the sample, every candidate is trained on it with the default recipe (the probe, through
  `tlkeras train`) and tested on the same `test_size` held-out examples; the top-ranked backbone's test
  accuracy is compared with the best candidate's (target: within 1 point, on the mean over the samples), and
  the Spearman correlation between the recommended and the trained ranking is reported. The test sets are the
  same for every sample, so their features come from the cache after the first.
"""

from __future__ import annotations

import time

from bench.common import fresh_home

NAME = "recommendation"
TARGET = ("top-ranked backbone within 1 point of the best trained candidate (Fashion-MNIST 10/class, Rotten "
          "Tomatoes 32/class); recommend over all offline image backbones on 500 images <= 5 min")
NO_CALLBACKS = {"checkpoint": False, "backup": False, "tensorboard": False, "progress": False}


def settings(quick: bool) -> dict:
    if quick:
        return dict(cost_images=40, image_per_class=2, text_per_class=4, test_size=40, folds=2, speech_per_class=2,
                    image_candidates="efficientnet_lite0*", text_candidates="paraphrase_minilm*", seeds=(0,))
    return dict(cost_images=500, image_per_class=10, text_per_class=32, test_size=500, folds=5, speech_per_class=4,
                image_candidates=None, text_candidates=None, seeds=(0, 1, 2))


def run(quick: bool, workdir) -> dict:
    from tlkeras.datasets import fashion_mnist, rotten_tomatoes
    from tlkeras.recommend import recommend

    cfg = settings(quick)
    with fresh_home(workdir, "recommendation"):
        cost_data = fashion_mnist(workdir / "rec" / "fm_cost", train_per_class=cfg["cost_images"] // 10, test_size=1,
                                  seed=1)
        start = time.perf_counter()
        cost = recommend(cost_data["train"], candidates=cfg["image_candidates"], sample=cfg["cost_images"],
                         folds=cfg["folds"], progress=False)
        cost_seconds = time.perf_counter() - start
        from tlkeras.datasets import spoken_digits

        image = _over_samples([fashion_mnist(workdir / "rec" / f"fm_{s}", train_per_class=cfg["image_per_class"],
                                             test_size=cfg["test_size"], seed=s) for s in cfg["seeds"]],
                              cfg["image_candidates"], cfg, workdir / "rec" / "runs_fm", {})
        text = _over_samples([rotten_tomatoes(workdir / "rec" / f"rt_{s}", train_per_class=cfg["text_per_class"],
                                              test_size=cfg["test_size"], seed=s) for s in cfg["seeds"]],
                             cfg["text_candidates"], cfg, workdir / "rec" / "runs_rt", {"text_column": "text"})
        speech = spoken_digits(workdir / "rec" / "speech", per_class=cfg["speech_per_class"], test_per_class=6)
        audio = _over_samples([speech], None, cfg, workdir / "rec" / "runs_audio", {"clip_seconds": 2})
    per_candidate = {r["name"]: r["seconds"] for r in cost.to_dict("records")}
    checks = {"cost_under_5_minutes": cost_seconds <= 300}
    causes = []
    if cost_seconds > 300:
        slowest = max(per_candidate, key=per_candidate.get)
        causes.append(f"recommend over the offline image backbones took {cost_seconds:.0f} s, the slowest "
                      f"{slowest} {per_candidate[slowest]:.0f} s (its forward pass at its own input size)")
    for name, table in (("fashion_mnist_10", image), ("rotten_tomatoes_32", text)):
        if table["gap"] is not None:
            checks[f"{name}_top_within_1_point"] = table["gap"] <= 0.01
            if table["gap"] > 0.01:
                causes.append(f"{name}: the top-ranked backbones scored {100 * table['gap']:.1f} points below the "
                              f"best on average over {len(table['samples'])} samples ({table['tops']})")
    return {"figures": {"cost_seconds": round(cost_seconds, 1), "cost_per_candidate_seconds": per_candidate,
                        "cost_ranking": _records(cost), "fashion_mnist_10": image, "rotten_tomatoes_32": text,
                        "spoken_digits": audio,
                        "targets": checks, **cfg},
            "met": None if quick else all(checks.values()),
            "summary": (f"recommend on {cfg['cost_images']} images: {cost_seconds:.0f} s over {len(per_candidate)} "
                        f"candidates; Fashion-MNIST 10/class: {_quality_line(image)}; Rotten Tomatoes 32/class: "
                        f"{_quality_line(text)}"),
            "cause": "; ".join(causes)}


def _over_samples(datasets, candidates, cfg, runs, data_options) -> dict:
    """The quality figures of each training sample, and their means."""
    samples = [_quality(d["train"], d["test"], candidates, cfg, runs / str(i), data_options)
               for i, d in enumerate(datasets)]
    scored = [s for s in samples if s["gap"] is not None]
    rhos = [s["spearman"] for s in scored if s["spearman"] is not None]
    return {"gap": round(sum(s["gap"] for s in scored) / len(scored), 4) if scored else None,
            "top_within_1_point": sum(s["gap"] <= 0.01 for s in scored),
            "spearman": round(sum(rhos) / len(rhos), 3) if rhos else None,
            "top_accuracy": _mean_of(scored, "top_accuracy"), "best_accuracy": _mean_of(scored, "best_accuracy"),
            "tops": ", ".join(f"{s['top']} {_pct(s['top_accuracy'])} vs {s['best']} {_pct(s['best_accuracy'])}"
                              for s in scored),
            "samples": samples}


def _mean_of(rows, key):
    return round(sum(r[key] for r in rows) / len(rows), 4) if rows else None


def _quality_line(table) -> str:
    n = len(table["samples"])
    return (f"top-ranked {_pct(table['top_accuracy'])} vs best {_pct(table['best_accuracy'])} (mean of {n} samples; "
            f"top within 1 point on {table['top_within_1_point']} of {n}), mean Spearman {table['spearman']}")


def _quality(train_data, test_data, candidates, cfg, runs, data_options) -> dict:
    from scipy.stats import spearmanr

    from tlkeras.recipes import parse_recipe, train
    from tlkeras.recommend import recommend

    ranking = recommend(train_data, candidates=candidates, folds=min(cfg["folds"], 4), progress=False,
                        text_column=data_options.get("text_column"))
    ranked = [r for r in ranking.to_dict("records") if r["rank"] is not None]
    trained = {}
    for row in ranked:
        recipe = parse_recipe({"backbone": row["name"], "callbacks": NO_CALLBACKS,
                               "data": {"train": str(train_data), "test": str(test_data), **data_options},
                               "output_dir": str(runs / row["name"])})
        trained[row["name"]] = float(train(recipe, verbose=0).metrics["accuracy"])
    if not ranked:
        return {"top": None, "best": None, "gap": None, "spearman": None, "trained": {}, "ranking": []}
    top = ranked[0]["name"]
    best = max(trained, key=trained.get)
    rho = spearmanr([r["probe_accuracy"] for r in ranked], [trained[r["name"]] for r in ranked]).statistic \
        if len(ranked) > 2 else None
    return {"top": top, "top_accuracy": round(trained[top], 4), "best": best, "best_accuracy": round(trained[best], 4),
            "gap": round(trained[best] - trained[top], 4), "spearman": None if rho is None else round(float(rho), 3),
            "trained": {k: round(v, 4) for k, v in trained.items()},
            "ranking": [{k: r[k] for k in ("rank", "tier", "name", "probe_accuracy", "probe_std", "logme", "latency_ms")}
                        for r in ranked]}


def _records(table) -> list[dict]:
    keep = ("rank", "name", "probe_accuracy", "logme", "latency_ms", "throughput", "seconds", "status")
    return [{k: r[k] for k in keep} for r in table.astype(object).where(table.notna(), None).to_dict("records")]


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
