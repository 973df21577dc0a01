"""Writes registry/keras_applications_<family>.yaml: one entry per model in the installed keras.applications.

Facts come from two places:
- measured here, by building every model with `weights=None` (no download): `params` (with the top, as
  the keras.io table counts them), `feature_dim` (without the top, globally average-pooled), the default
  `input_size`, and the layer names that `layer_groups` are checked against;
- written below, from the keras.io applications table: file size and ImageNet top-1 accuracy.

The preprocessing mode of each family is read from the installed keras source and must match the mode
declared here, so a keras upgrade that changes one fails loudly.

`layer_groups` are boundaries: each prefix names where a group starts, i.e. the first layer (in
`model.layers` order) whose name starts with it; the group runs to the next boundary. The script checks
that every prefix matches, that boundaries come in order, that no trainable layer precedes the first
one, and that every group holds trainable weights.

Usage (builds ~40 models on CPU, about 10 minutes and 3 GB of RAM; the measurements are kept in
scripts/keras_applications_measurements.json, so later runs and `--check` build nothing):
    .venv/bin/python scripts/generate_keras_applications_catalog.py --cache scripts/keras_applications_measurements.json
    .venv/bin/python scripts/generate_keras_applications_catalog.py --cache scripts/keras_applications_measurements.json --check
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import json
import re
import sys
from pathlib import Path

import yaml

REGISTRY = Path(__file__).resolve().parent.parent / "registry"
PREFIX = "keras_applications_"
TABLE = "keras.io/api/applications table"

# Pixel normalisation of each `preprocess_input` mode, for RGB pixels in [0, 255]: (mean, std, order).
MODES = {
    "caffe": ([103.939, 116.779, 123.68], [1.0, 1.0, 1.0], "BGR",
              "caffe mode: RGB to BGR, subtract the ImageNet channel means, no scaling"),
    "tf": ([127.5, 127.5, 127.5], [127.5, 127.5, 127.5], "RGB", "tf mode: x / 127.5 - 1, to [-1, 1]"),
    "torch": ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], "RGB",
              "torch mode: x / 255, then subtract the ImageNet mean and divide by its std"),
    "builtin": ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], "RGB",
                "built into the model (Rescaling/Normalization layers): feed RGB pixels in [0, 255]"),
}


@dataclasses.dataclass(frozen=True)
class Model:
    architecture: str  # keras.applications builder
    name: str
    size: int  # default input side
    size_mb: float | None = None  # keras.io table
    top1: float | None = None  # keras.io table, a fraction
    table_params_m: float | None = None  # keras.io table, millions: checked against the measured count
    pretrain: str = "ImageNet-1k"
    accuracy_citation: str = TABLE


@dataclasses.dataclass(frozen=True)
class Family:
    file: str
    family: str
    module: str  # keras.src.applications module holding preprocess_input
    mode: str
    paper: str
    models: tuple[Model, ...]


MOBILENET_V3_CITATION = "keras mobilenet_v3 module docstring table (1.0x, 224)"
IN21K = "ImageNet-21k, then ImageNet-1k"

FAMILIES = (
    Family("vgg", "vgg", "vgg16", "caffe", "https://arxiv.org/abs/1409.1556", (
        Model("VGG16", "vgg16_imagenet", 224, 528, 0.713, 138.357544),
        Model("VGG19", "vgg19_imagenet", 224, 549, 0.713, 143.667240),
    )),
    Family("resnet", "resnet", "resnet", "caffe", "https://arxiv.org/abs/1512.03385", (
        Model("ResNet50", "resnet50_imagenet", 224, 98, 0.749, 25.636712),
        Model("ResNet101", "resnet101_imagenet", 224, 171, 0.764, 44.707176),
        Model("ResNet152", "resnet152_imagenet", 224, 232, 0.766, 60.419944),
    )),
    Family("resnet_v2", "resnet_v2", "resnet_v2", "tf", "https://arxiv.org/abs/1603.05027", (
        Model("ResNet50V2", "resnet50_v2_imagenet", 224, 98, 0.760, 25.613800),
        Model("ResNet101V2", "resnet101_v2_imagenet", 224, 171, 0.772, 44.675560),
        Model("ResNet152V2", "resnet152_v2_imagenet", 224, 232, 0.780, 60.380648),
    )),
    Family("inception", "inception", "inception_v3", "tf", "https://arxiv.org/abs/1512.00567", (
        Model("InceptionV3", "inception_v3_imagenet", 299, 92, 0.779, 23.851784),
    )),
    Family("inception", "inception_resnet", "inception_resnet_v2", "tf", "https://arxiv.org/abs/1602.07261", (
        Model("InceptionResNetV2", "inception_resnet_v2_imagenet", 299, 215, 0.803, 55.873736),
    )),
    Family("xception", "xception", "xception", "tf", "https://arxiv.org/abs/1610.02357", (
        Model("Xception", "xception_imagenet", 299, 88, 0.790, 22.910480),
    )),
    Family("mobilenet", "mobilenet", "mobilenet", "tf", "https://arxiv.org/abs/1704.04861", (
        Model("MobileNet", "mobilenet_imagenet", 224, 16, 0.704, 4.253864),
    )),
    Family("mobilenet", "mobilenet_v2", "mobilenet_v2", "tf", "https://arxiv.org/abs/1801.04381", (
        Model("MobileNetV2", "mobilenet_v2_imagenet", 224, 14, 0.713, 3.538984),
    )),
    # Not in the keras.io table: accuracy from the keras module docstring, size unknown.
    Family("mobilenet", "mobilenet_v3", "mobilenet_v3", "builtin", "https://arxiv.org/abs/1905.02244", (
        Model("MobileNetV3Small", "mobilenet_v3_small_imagenet", 224, None, 0.681,
              accuracy_citation=MOBILENET_V3_CITATION),
        Model("MobileNetV3Large", "mobilenet_v3_large_imagenet", 224, None, 0.756,
              accuracy_citation=MOBILENET_V3_CITATION),
    )),
    Family("densenet", "densenet", "densenet", "torch", "https://arxiv.org/abs/1608.06993", (
        Model("DenseNet121", "densenet121_imagenet", 224, 33, 0.750, 8.062504),
        Model("DenseNet169", "densenet169_imagenet", 224, 57, 0.762, 14.307880),
        Model("DenseNet201", "densenet201_imagenet", 224, 80, 0.773, 20.242984),
    )),
    Family("nasnet", "nasnet", "nasnet", "tf", "https://arxiv.org/abs/1707.07012", (
        Model("NASNetMobile", "nasnet_mobile_imagenet", 224, 23, 0.744, 5.326716),
        Model("NASNetLarge", "nasnet_large_imagenet", 331, 343, 0.825, 88.949818),
    )),
    Family("efficientnet", "efficientnet", "efficientnet", "builtin", "https://arxiv.org/abs/1905.11946", (
        Model("EfficientNetB0", "efficientnet_b0_imagenet", 224, 29, 0.771, 5.330571),
        Model("EfficientNetB1", "efficientnet_b1_imagenet", 240, 31, 0.791, 7.856239),
        Model("EfficientNetB2", "efficientnet_b2_imagenet", 260, 36, 0.801, 9.177569),
        Model("EfficientNetB3", "efficientnet_b3_imagenet", 300, 48, 0.816, 12.320535),
        Model("EfficientNetB4", "efficientnet_b4_imagenet", 380, 75, 0.829, 19.466823),
        Model("EfficientNetB5", "efficientnet_b5_imagenet", 456, 118, 0.836, 30.562527),
        Model("EfficientNetB6", "efficientnet_b6_imagenet", 528, 166, 0.840, 43.265143),
        Model("EfficientNetB7", "efficientnet_b7_imagenet", 600, 256, 0.843, 66.658687),
    )),
    Family("efficientnet_v2", "efficientnet_v2", "efficientnet_v2", "builtin",
           "https://arxiv.org/abs/2104.00298", (
        Model("EfficientNetV2B0", "efficientnetv2_b0_imagenet", 224, 29, 0.787, 7.2),
        Model("EfficientNetV2B1", "efficientnetv2_b1_imagenet", 240, 34, 0.798, 8.2),
        Model("EfficientNetV2B2", "efficientnetv2_b2_imagenet", 260, 42, 0.805, 10.2),
        Model("EfficientNetV2B3", "efficientnetv2_b3_imagenet", 300, 59, 0.820, 14.5),
        Model("EfficientNetV2S", "efficientnetv2_s_imagenet", 384, 88, 0.839, 21.6),
        Model("EfficientNetV2M", "efficientnetv2_m_imagenet", 480, 220, 0.853, 54.4),
        Model("EfficientNetV2L", "efficientnetv2_l_imagenet", 480, 479, 0.857, 119.0),
    )),
    # The keras.io table this was checked against has no ConvNeXt rows: accuracy and size stay unset.
    # Pre-training per the keras convnext module docstring.
    Family("convnext", "convnext", "convnext", "builtin", "https://arxiv.org/abs/2201.03545", (
        Model("ConvNeXtTiny", "convnext_tiny_imagenet", 224),
        Model("ConvNeXtSmall", "convnext_small_imagenet", 224),
        Model("ConvNeXtBase", "convnext_base_imagenet", 224, pretrain=IN21K),
        Model("ConvNeXtLarge", "convnext_large_imagenet", 224, pretrain=IN21K),
        Model("ConvNeXtXLarge", "convnext_xlarge_imagenet", 224, pretrain=IN21K),
    )),
)


# ---------------------------------------------------------------------------------------------------
# Layer groups, from the real layer names of each model (include_top=False).


def _numbers(names, pattern):
    return sorted({int(m.group(1)) for n in names if (m := re.match(pattern, n))})


def layer_groups(architecture: str, names: list[str]) -> list[str]:
    """Stage boundaries, from input to output."""
    if architecture.startswith(("VGG",)):
        return [f"block{i}" for i in _numbers(names, r"block(\d+)_")]
    if architecture.startswith("ResNet"):
        return [f"conv{i}" for i in _numbers(names, r"conv(\d+)_")] + (["post"] if "post_bn" in names else [])
    if architecture.startswith("DenseNet"):
        return ["conv1", "conv2", "pool2", "conv3", "pool3", "conv4", "pool4", "conv5", "bn"]
    if architecture.startswith("EfficientNet"):
        return ["stem"] + [f"block{i}" for i in _numbers(names, r"block(\d+)[a-z]_")] + ["top"]
    if architecture.startswith("ConvNeXt"):
        stem = next(n for n in names if n.endswith("_stem"))
        base = stem[: -len("stem")]
        stages = _numbers(names, re.escape(base) + r"stage_(\d+)_")
        groups = [stem]
        for i in stages:
            if i:
                groups.append(f"{base}downsampling_block_{i - 1}")
            groups.append(f"{base}stage_{i}")
        return groups
    if architecture == "Xception":
        # A trailing "_" keeps block1_ from also naming block10_ ... block14_.
        return [f"block{i}_" for i in _numbers(names, r"block(\d+)_")]
    if architecture == "InceptionV3":
        # Stem and block convs are auto-named (conv2d_N); the stable names are the block outputs
        # mixed0 ... mixed10, so group k starts at block k's output and holds block k+1's convs.
        return ["conv2d"] + [f"mixed{i}" for i in range(9)]
    if architecture == "InceptionResNetV2":
        return ["conv2d", "mixed_5b", "mixed_6a", "mixed_7a", "conv_7b"]
    if architecture == "MobileNet":
        # Stages start at the stride-2 blocks, each preceded by its padding layer.
        return ["conv1", "conv_dw_1"] + [f"conv_pad_{i}" for i in _numbers(names, r"conv_pad_(\d+)$")]
    if architecture == "MobileNetV2":
        return ["Conv1", "expanded_conv", "block_1_", "block_3_", "block_6_", "block_10_", "block_13_",
                "block_16_", "Conv_1"]
    if architecture == "MobileNetV3Small":
        return ["conv", "expanded_conv_", "expanded_conv_1_", "expanded_conv_3_", "expanded_conv_8_", "conv_1"]
    if architecture == "MobileNetV3Large":
        return ["conv", "expanded_conv_", "expanded_conv_1_", "expanded_conv_3_", "expanded_conv_6_",
                "expanded_conv_12_", "conv_1"]
    if architecture.startswith("NASNet"):
        reductions = [n for n in names if re.match(r"reduction_conv_1_reduce_\d+$", n)]
        return ["stem_conv1", "normal_conv_1_0"] + reductions
    raise SystemExit(f"no layer-group rule for {architecture}")


def check_groups(architecture: str, groups: list[str], layers: list[tuple[str, bool]]) -> bool:
    """Raises SystemExit unless `groups` are valid boundaries; returns whether they are also exact
    prefixes (every trainable layer's name starts with its own group's prefix)."""
    names = [n for n, _ in layers]
    starts = []
    for prefix in groups:
        index = next((i for i, n in enumerate(names) if n.startswith(prefix)), None)
        if index is None:
            raise SystemExit(f"{architecture}: layer group '{prefix}' matches no layer")
        starts.append(index)
    if starts != sorted(set(starts)):
        raise SystemExit(f"{architecture}: layer groups out of order: {list(zip(groups, starts, strict=True))}")
    if any(trainable for _, trainable in layers[: starts[0]]):
        raise SystemExit(f"{architecture}: trainable layers before the first group '{groups[0]}'")
    exact = True
    for k, (prefix, start) in enumerate(zip(groups, starts, strict=True)):
        end = starts[k + 1] if k + 1 < len(starts) else len(layers)
        members = [(n, t) for n, t in layers[start:end] if t]
        if not members:
            raise SystemExit(f"{architecture}: layer group '{prefix}' holds no trainable layer")
        exact &= all(n.startswith(prefix) for n, _ in members)
    return exact


# ---------------------------------------------------------------------------------------------------


def preprocess_mode(module_name: str) -> str:
    """The mode the installed keras `preprocess_input` of a module uses; "builtin" for pass-through."""
    module = __import__(f"keras.src.applications.{module_name}", fromlist=["preprocess_input"])
    source = inspect.getsource(module.preprocess_input)
    match = re.search(r'mode="(\w+)"', source)
    if match:
        return match.group(1)
    if "placeholder" in source.lower() or re.search(r"return x\s*$", source.strip()):
        return "builtin"
    raise SystemExit(f"cannot tell the preprocess_input mode of keras.applications.{module_name}")


def measure(architecture: str, size: int) -> dict:
    """Builds the model twice with random weights; returns what the catalog needs."""
    import keras

    builder = getattr(keras.applications, architecture)
    model = builder(weights=None, include_top=True)
    params = model.count_params()
    default = model.input_shape[1]
    del model
    keras.backend.clear_session()
    gc.collect()
    model = builder(weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3))
    stats = {
        "params": params,
        "default_size": default,
        "feature_dim": int(model.output_shape[-1]),
        "layers": [(layer.name, bool(layer.trainable_weights)) for layer in model.layers],
    }
    del model
    keras.backend.clear_session()
    gc.collect()
    return stats


def installed_models() -> set[str]:
    import keras

    return {n for n in dir(keras.applications) if n[0].isupper() and callable(getattr(keras.applications, n))}


def entry_for(family: Family, model: Model, stats: dict) -> tuple[dict, bool]:
    if stats["default_size"] not in (None, model.size):
        raise SystemExit(f"{model.architecture}: default input {stats['default_size']}, table says {model.size}")
    if model.table_params_m and abs(stats["params"] / 1e6 - model.table_params_m) > 0.05:
        raise SystemExit(f"{model.architecture}: {stats['params']} params, the table says {model.table_params_m}M")
    names = [n for n, _ in stats["layers"]]
    groups = layer_groups(model.architecture, names)
    exact = check_groups(model.architecture, groups, [tuple(layer) for layer in stats["layers"]])
    entry = {"name": model.name}
    if family.family != family.file:
        entry["family"] = family.family
    entry["architecture"] = model.architecture
    entry["description"] = f"keras.applications.{model.architecture} with its ImageNet weights."
    if model.pretrain != "ImageNet-1k":
        entry["pretrain_data"] = model.pretrain
    entry["params"] = stats["params"]
    if model.size_mb is not None:
        entry["size_mb"] = float(model.size_mb)
    entry["input_size"] = [model.size, model.size]
    entry["feature_dim"] = stats["feature_dim"]
    if model.top1 is not None:
        entry["accuracy"] = model.top1
        entry["accuracy_metric"] = "top1"
        entry["accuracy_dataset"] = "ImageNet-1k val"
        entry["accuracy_citation"] = model.accuracy_citation
    entry["layer_groups"] = groups
    return entry, exact


def render(file: str, families: list[Family], entries: list[dict]) -> str:
    import keras

    mean, std, order, summary = MODES[families[0].mode]
    defaults = {
        "source": "keras_applications",
        "domain": "image",
        "tasks": ["classification"],
        "handle": "imagenet",
        "pretrain_data": "ImageNet-1k",
        "channel_order": order,
        "pixel_mean": mean,
        "pixel_std": std,
        "preprocessing": summary,
        "pooling": "avg",
        "license": "Apache-2.0",
        "paper": families[0].paper,
    }
    # Families sharing a file may differ in paper or mode: those go on the entries.
    for fam, group in ((f, [e for e in entries if e["_family"] is f]) for f in families):
        for entry in group:
            if fam.paper != defaults["paper"]:
                entry["paper"] = fam.paper
            if fam.mode != families[0].mode:
                m_mean, m_std, m_order, m_summary = MODES[fam.mode]
                entry.update(channel_order=m_order, pixel_mean=m_mean, pixel_std=m_std, preprocessing=m_summary)
    document = {
        "family": file,
        "defaults": defaults,
        "entries": [{k: v for k, v in e.items() if k != "_family"} for e in entries],
    }
    header = (
        f"# Generated by scripts/generate_keras_applications_catalog.py from keras {keras.__version__}\n"
        "# (measured params / feature_dim / layer names) and the keras.io applications table (size, top-1).\n"
        "# Do not edit by hand; rerun: .venv/bin/python scripts/generate_keras_applications_catalog.py\n"
        "# layer_groups are boundaries: a group starts at the first layer whose name starts with the prefix.\n"
    )
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110)
    return header + body


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=not any(isinstance(x, (dict, list)) for x in data)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REGISTRY, help="catalog directory (default: registry/)")
    parser.add_argument("--cache", type=Path, help="JSON of measurements: read if present, else written")
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file would change")
    args = parser.parse_args(argv)

    declared = {m.architecture for f in FAMILIES for m in f.models}
    missing = installed_models() - declared
    if missing:
        raise SystemExit(f"keras.applications models with no catalog row: {sorted(missing)}")
    for family in FAMILIES:
        mode = preprocess_mode(family.module)
        if mode != family.mode:
            raise SystemExit(f"{family.module}: keras preprocess_input uses mode {mode!r}, not {family.mode!r}")

    cache = json.loads(args.cache.read_text()) if args.cache and args.cache.exists() else {}
    for family in FAMILIES:
        for model in family.models:
            if model.architecture not in cache:
                print(f"building {model.architecture} ...", flush=True)
                cache[model.architecture] = measure(model.architecture, model.size)
                if args.cache:
                    args.cache.write_text(json.dumps(cache))

    files: dict[str, list[Family]] = {}
    for family in FAMILIES:
        files.setdefault(family.file, []).append(family)
    total, stale = 0, []
    for file, families in files.items():
        entries = []
        for family in families:
            for model in family.models:
                entry, exact = entry_for(family, model, cache[model.architecture])
                entry["_family"] = family
                entries.append(entry)
                note = "" if exact else "  (boundaries, not exact name prefixes)"
                print(f"  {model.name}: {len(entry['layer_groups'])} groups{note}")
        path = args.out / f"{PREFIX}{file}.yaml"
        text = render(file, families, entries)
        total += len(entries)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
            continue
        path.write_text(text)
        print(f"{path.name}: {len(entries)} models")
    if stale:
        print(f"stale: {', '.join(stale)}; rerun scripts/generate_keras_applications_catalog.py", file=sys.stderr)
        return 1
    print(f"{total} keras.applications models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
