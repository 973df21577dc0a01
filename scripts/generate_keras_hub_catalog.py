"""Writes registry/keras_hub_<family>.yaml from the preset metadata that keras-hub ships offline.

keras-hub keeps each model's presets as plain data in `keras_hub/src/models/<family>/<family>_presets.py`:
a description, a parameter count and a Kaggle handle per preset. This script turns the families useful
for transfer learning (image, text and audio encoders) into catalog entries. It needs no network.

What the metadata does not say is left unset rather than guessed: feature_dim comes from the
description ("384-dimensional") or from the standard width of a named model size; input_size from the
preset name or description; pretrain_data from the description.

Usage:
    .venv/bin/python scripts/generate_keras_hub_catalog.py            # rewrites registry/keras_hub_*.yaml
    .venv/bin/python scripts/generate_keras_hub_catalog.py --check    # fails if the files are stale
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from pathlib import Path

import yaml

REGISTRY = Path(__file__).resolve().parent.parent / "registry"
PREFIX = "keras_hub_"


@dataclasses.dataclass(frozen=True)
class Family:
    """One keras-hub model folder and what every preset in it shares."""

    module: str  # folder under keras_hub/src/models
    domain: str
    paper: str = ""
    # Output width by model-size word in the preset name, e.g. {"base": 768}; checked in name order.
    widths: tuple[tuple[str, int], ...] = ()
    extra: tuple[tuple[str, object], ...] = ()  # fields set on every entry of the family


CLASSIFIER = (("tasks", ["classification"]),)
EMBEDDER = (("tasks", ["classification", "embedding", "similarity"]),)
ENCODER = (("tasks", ["classification", "embedding"]),)


def groups(*patterns: str) -> tuple[tuple[str, object], ...]:
    """Layer groups from the family's layer names (a `name_*` pattern is one group per block number)."""
    return (("layer_groups", list(patterns)),)


# keras-hub DINOv2/v3 resample trained position embeddings on save: keep them frozen.
DINO_POSITIONS = (("frozen_variables", ["interpolated_position_embeddings"]),)
# Dual encoders: the image tower is the backbone's `vision_encoder`, pooled at its class token.
VISION_TOWER = (("submodel", "vision_encoder"), ("pooling", "cls"))
AUDIO_NOT_YET = (("supports", []), ("unsupported", "audio backbones from keras-hub presets are not wired to the "
                                                   "audio input kind yet"))
RESNET_WIDTHS = (("_18_", 512), ("_34_", 512), ("_50_", 2048), ("_101_", 2048), ("_152_", 2048),
                 ("_200_", 2048))
BERT_WIDTHS = (("_minilm_", 384), ("tiny", 128), ("small", 512), ("medium", 512), ("base", 768), ("large", 1024))

FAMILIES = (
    # Image encoders.
    Family("resnet", "image", "https://arxiv.org/abs/1512.03385", RESNET_WIDTHS, CLASSIFIER + groups("stack*")),
    Family("efficientnet", "image", "https://arxiv.org/abs/1905.11946",
           (("_b0_", 1280), ("_b1_", 1280), ("_b2_", 1408), ("_b3_", 1536), ("_b4_", 1792),
            ("_b5_", 2048), ("_lite0_", 1280)), CLASSIFIER),
    Family("mobilenet", "image", "https://arxiv.org/abs/1905.02244", (), CLASSIFIER + groups("block_*")),
    Family("mobilenetv5", "image", "", (), ENCODER),
    Family("vgg", "image", "https://arxiv.org/abs/1409.1556", (("vgg_", 512),), CLASSIFIER + groups("block*")),
    Family("densenet", "image", "https://arxiv.org/abs/1608.06993",
           (("_121_", 1024), ("_169_", 1664), ("_201_", 1920)), CLASSIFIER + groups("stack*")),
    Family("cspnet", "image", "https://arxiv.org/abs/1911.11929", (), CLASSIFIER + groups("stage_*")),
    Family("hgnetv2", "image", "", (), CLASSIFIER),
    Family("xception", "image", "https://arxiv.org/abs/1610.02357", (), CLASSIFIER + groups("block*")),
    Family("vit", "image", "https://arxiv.org/abs/2010.11929",
           (("_base_", 768), ("_large_", 1024), ("_huge_", 1280)), CLASSIFIER + groups("transformer_block_*")),
    Family("deit", "image", "https://arxiv.org/abs/2012.12877",
           (("_tiny_", 192), ("_small_", 384), ("_base_", 768)), CLASSIFIER + groups("transformer_block_*")),
    Family("dinov2", "image", "https://arxiv.org/abs/2304.07193",
           (("_small", 384), ("_base", 768), ("_large", 1024), ("_giant", 1536)), ENCODER + groups("layers_*") + DINO_POSITIONS),
    Family("dinov3", "image", "",
           (("_small_plus_", 384), ("_small_", 384), ("_base_", 768), ("_large_", 1024),
            ("_huge_plus_", 1280), ("_7b_", 4096)), ENCODER + groups("layers_*") + DINO_POSITIONS),
    Family("swin_transformer", "image", "https://arxiv.org/abs/2103.14030",
           (("_tiny_", 768), ("_small_", 768), ("_base_", 1024), ("_large_", 1536)), CLASSIFIER + groups("stage_*")),
    # Dual encoders: tlkeras uses the vision tower. Its width differs from the joint embedding, so
    # feature_dim stays unset.
    Family("clip", "image", "https://arxiv.org/abs/2103.00020", (), ENCODER + VISION_TOWER),
    Family("siglip", "image", "https://arxiv.org/abs/2303.15343", (), ENCODER + VISION_TOWER),
    Family("metaclip_2", "image", "", (), ENCODER + VISION_TOWER),
    # Text encoders.
    Family("bert", "text", "https://arxiv.org/abs/1810.04805", BERT_WIDTHS, CLASSIFIER + groups("transformer_layer_*")),
    Family("distil_bert", "text", "https://arxiv.org/abs/1910.01108", (("_base_", 768),),
           CLASSIFIER + groups("transformer_layer_*")),
    Family("roberta", "text", "https://arxiv.org/abs/1907.11692", (("_base_", 768), ("_large_", 1024)),
           CLASSIFIER + groups("transformer_layer_*")),
    Family("deberta_v3", "text", "https://arxiv.org/abs/2111.09543",
           (("_extra_small_", 384), ("_small_", 768), ("_base_", 768), ("_large_", 1024)),
           CLASSIFIER + groups("disentangled_attention_encoder_layer_*")),
    # ELECTRA generators are narrower than their discriminators, so only discriminators get a width.
    Family("electra", "text", "https://arxiv.org/abs/2003.10555",
           (("_small_discriminator_", 256), ("_base_discriminator_", 768),
            ("_large_discriminator_", 1024)), CLASSIFIER + groups("transformer_layer_*")),
    Family("albert", "text", "https://arxiv.org/abs/1909.11942",
           (("_extra_extra_large_", 4096), ("_extra_large_", 2048), ("_base_", 768), ("_large_", 1024)),
           CLASSIFIER + groups("group_*")),
    Family("xlm_roberta", "text", "https://arxiv.org/abs/1911.02116",
           (("xlm_roberta_base_", 768), ("xlm_roberta_large_", 1024), ("_bge_m3_", 1024)),
           CLASSIFIER + groups("transformer_layer_*")),
    Family("f_net", "text", "https://arxiv.org/abs/2105.03824", (("_base_", 768), ("_large_", 1024)),
           CLASSIFIER + groups("f_net_layer_*")),
    # Audio encoders (encoder-decoder speech models; tlkeras would use the encoder).
    Family("whisper", "audio", "https://arxiv.org/abs/2212.04356",
           (("_tiny_", 384), ("_base_", 512), ("_small_", 768), ("_medium_", 1024), ("_large_", 1280)),
           ENCODER + AUDIO_NOT_YET),
    Family("moonshine", "audio", "", (), ENCODER + AUDIO_NOT_YET),
)

# Presets that live in a family's file but are a different model line, by name prefix.
SUBFAMILIES = (
    ("resnet_vd_", "resnet_vd", "https://arxiv.org/abs/1812.01187"),
    ("resnet_v2_", "resnet_v2", "https://arxiv.org/abs/1603.05027"),
    ("efficientnet2_", "efficientnet_v2", "https://arxiv.org/abs/2104.00298"),
    ("efficientnet_e", "efficientnet_edgetpu", ""),
    ("efficientnet_lite", "efficientnet_lite", ""),
    ("dinov2_with_registers_", "dinov2", "https://arxiv.org/abs/2309.16588"),
    ("siglip2_", "siglip2", ""),
    ("medsiglip_", "medsiglip", ""),
    ("all_minilm_", "sentence_transformers", "https://arxiv.org/abs/2002.10957"),
    ("paraphrase_minilm_", "sentence_transformers", "https://arxiv.org/abs/2002.10957"),
    ("multi_qa_minilm_", "sentence_transformers", "https://arxiv.org/abs/2002.10957"),
    ("msmarco_minilm_", "sentence_transformers", "https://arxiv.org/abs/2002.10957"),
    ("bge_", "bge", ""),
    ("multilingual_e5_", "e5", ""),
    ("mxbai_", "mxbai_embed", ""),
)

# Pre-training data named in descriptions, most specific first: (pattern, catalog wording).
PRETRAIN_PATTERNS = (
    (r"ImageNet[- ]22K and fine-tuned on ImageNet[- ]1K", "ImageNet-22k, then ImageNet-1k"),
    (r"ImageNet 12k dataset and fine-tuned on ImageNet-1k", "ImageNet-12k, then ImageNet-1k"),
    (r"ImageNet[- ]?1[kK]", "ImageNet-1k"),
    (r"ImageNet[- ]?21k", "ImageNet-21k"),
    (r"ImageNet 12k", "ImageNet-12k"),
    (r"LVD-1689M", "LVD-1689M"),
    (r"SAT-493M", "SAT-493M (satellite imagery)"),
    (r"WebLi", "WebLi"),
    (r"English Wikipedia \+ BooksCorpus", "English Wikipedia + BooksCorpus"),
    (r"Chinese Wikipedia", "Chinese Wikipedia"),
    (r"Wikipedias of 104 languages", "Wikipedia in 104 languages"),
    (r"English Wikipedia, BooksCorpus, CommonCraw", "English Wikipedia, BooksCorpus, CommonCrawl, OpenWebText"),
    (r"English Wikipedia, BookCorpus and OpenWebText", "English Wikipedia, BookCorpus, OpenWebText"),
    (r"CC100", "CC100 (2.5 TB, multilingual)"),
    (r"CommonCrawl in 100 languages", "CommonCrawl in 100 languages"),
    (r"C4 dataset", "C4"),
    (r"438,000 hours of labelled English speech", "438k hours of labelled English speech"),
    (r"680,000\s+hours of labelled multilingual speech", "680k hours of labelled multilingual speech"),
    (r"fine-tuned on the SST-2", "English Wikipedia + BooksCorpus, then SST-2"),
    (r"1B\+ sentence pairs", "1B+ sentence pairs"),
    (r"215M QA pairs", "215M question-answer pairs"),
    (r"MS MARCO", "MS MARCO passage ranking"),
    (r"29B seen pairs", "MetaCLIP 2 worldwide image-text pairs (29B seen)"),
)
NAME_PRETRAIN = ((r"laion2b", "LAION-2B"),)
MEAN_POOLED = ("all_minilm_", "paraphrase_minilm_", "multi_qa_minilm_", "msmarco_minilm_",
               "multilingual_e5_", "mxbai_embed_xsmall_")


def backbone_classes() -> dict[str, str]:
    """Maps every registered preset name to the name of its keras-hub Backbone class."""
    import keras_hub

    classes = [
        cls for cls in vars(keras_hub.models).values()
        if isinstance(cls, type) and issubclass(cls, keras_hub.models.Backbone)
    ]
    # A base class (Backbone, FeaturePyramidBackbone) lists its subclasses' presets too: the owner is
    # the class with the fewest presets that still lists the name.
    owners = {}
    for cls in sorted(classes, key=lambda c: len(c.presets or {}), reverse=True):
        for preset in cls.presets or {}:
            owners[preset] = cls.__name__
    return owners


def _first(patterns, text: str) -> str:
    for pattern, value in patterns:
        if re.search(pattern, text):
            return value
    return ""


def _input_size(name: str, description: str) -> list[int] | None:
    # The name wins: one description (siglip2_so400m_patch14_384) names the wrong size.
    # Depths share the pattern (resnet_101, densenet_201); image sizes are multiples of the patch size.
    for match in re.finditer(r"(?:_|r)(\d{3})(?=_|$)", name):
        size = int(match.group(1))
        if size >= 160 and (size % 16 == 0 or size % 14 == 0):
            return [size, size]
    match = re.search(r"(\d{3})x(\d{3})", description) or re.search(r"image size (\d{3})", description)
    if match:
        size = int(match.group(1))
        return [size, size]
    return None


def _feature_dim(family: Family, name: str, description: str) -> int | None:
    match = re.search(r"(\d+)-dimensional", description)
    if match:
        return int(match.group(1))
    padded = f"_{name}_"
    for word, width in family.widths:
        if word in padded:
            return width
    return None


def entry_for(family: Family, name: str, preset: dict, architecture: str) -> dict:
    """Returns the catalog mapping for one preset."""
    meta = preset["metadata"]
    description = " ".join(meta["description"].split())
    sub = next(((f, p) for prefix, f, p in SUBFAMILIES if name.startswith(prefix)), None)
    entry = {"name": name}
    if sub:
        entry["family"] = sub[0]
    entry.update(dict(family.extra))
    if name.startswith(MEAN_POOLED) or name.startswith(("bge_", "mxbai_", "multilingual_e5_")):
        entry["tasks"] = ["classification", "embedding", "similarity"]
    entry["description"] = description
    entry["architecture"] = architecture
    entry["handle"] = name
    pretrain = _first(PRETRAIN_PATTERNS, description) or _first(NAME_PRETRAIN, name)
    if pretrain:
        entry["pretrain_data"] = pretrain
    if meta.get("params"):
        entry["params"] = int(meta["params"])
    if family.domain == "image":
        size = _input_size(name, description)
        if size:
            entry["input_size"] = size
        entry["preprocessing"] = "resize and normalisation by the preset's keras-hub ImageConverter"
    elif family.domain == "text":
        match = re.search(r"sequences up to (\d+) tokens", description)
        entry["sequence_length"] = int(match.group(1)) if match else 512
        entry["preprocessing"] = "the preset's keras-hub tokenizer and TextClassifierPreprocessor"
        entry["pooling"] = "mean" if name.startswith(MEAN_POOLED) else "cls"
    else:
        entry["sample_rate"] = 16000
        entry["preprocessing"] = "16 kHz mono waveform through the preset's keras-hub AudioConverter"
        entry["pooling"] = "mean"
    dim = _feature_dim(family, name, description)
    if dim:
        entry["feature_dim"] = dim
    paper = sub[1] if sub and sub[1] else ("" if sub else family.paper)
    if paper:
        entry["paper"] = paper
    return entry


def family_document(family: Family, owners: dict[str, str]) -> dict:
    module = importlib.import_module(f"keras_hub.src.models.{family.module}.{family.module}_presets")
    entries = []
    for name, preset in module.backbone_presets.items():
        if name not in owners:
            raise SystemExit(f"preset '{name}' of {family.module} is registered on no Backbone class")
        entries.append(entry_for(family, name, preset, owners[name]))
    defaults = {"source": "keras_hub", "domain": family.domain}
    defaults.update(shared_fields(entries))
    entries = [{k: v for k, v in e.items() if k not in defaults} for e in entries]
    return {"family": family.module, "defaults": defaults, "entries": entries}


def shared_fields(entries: list[dict]) -> dict:
    """The fields every entry sets to the same value, to state once under `defaults`."""
    unique = ("name", "handle", "description", "params")
    first = entries[0]
    return {
        key: value for key, value in first.items()
        if key not in unique and all(key in e and e[key] == value for e in entries[1:])
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):  # equal lists are written out, not as &anchors
        return True


# Lists of scalars ([224, 224]) on one line; the entry list and mappings in block style.
_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=not any(isinstance(x, (dict, list)) for x in data)))


def render(document: dict) -> str:
    import keras_hub

    header = (
        f"# Generated by scripts/generate_keras_hub_catalog.py from keras-hub {keras_hub.__version__} preset\n"
        "# metadata. Do not edit by hand; rerun: .venv/bin/python scripts/generate_keras_hub_catalog.py\n"
    )
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110, allow_unicode=True)
    return header + body


def other_names(directory: Path) -> set[str]:
    """Names defined by the catalog files this script does not write."""
    names = set()
    for path in sorted(directory.glob("*.yaml")):
        if not path.name.startswith(PREFIX):
            doc = yaml.safe_load(path.read_text()) or {}
            names |= {e["name"] for e in doc.get("entries", []) if isinstance(e, dict) and "name" in e}
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REGISTRY, help="catalog directory (default: registry/)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file would change")
    args = parser.parse_args(argv)

    owners = backbone_classes()
    taken = other_names(args.out)
    seen: set[str] = set()
    stale = []
    for family in FAMILIES:
        document = family_document(family, owners)
        names = [e["name"] for e in document["entries"]]
        clashes = (set(names) & (taken | seen)) | {n for n in names if names.count(n) > 1}
        if clashes:
            raise SystemExit(f"{family.module}: names already in the catalog: {sorted(clashes)}")
        seen |= set(names)
        path = args.out / f"{PREFIX}{family.module}.yaml"
        text = render(document)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"{path.name}: {len(names)} {family.domain} presets")
    if stale:
        print(f"stale: {', '.join(stale)}; rerun scripts/generate_keras_hub_catalog.py", file=sys.stderr)
        return 1
    print(f"{len(seen)} keras-hub presets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
