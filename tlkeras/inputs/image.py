"""Images: decoding and resizing (one implementation, used by training pipelines and by the exported
serving graph), file checks, the pixel-normalising feature extractor, augmentation, and the
`serving_default` (encoded bytes) and `serving_images` (uint8 pixels) signatures.

Every image reaches a model as float32 RGB pixels in [0, 255], (B, H, W, 3): grey images become RGB,
alpha is dropped, animations keep their first frame, and the image is resized bilinearly (no
antialiasing, no crop) to the recipe's size. Backbones normalise pixels inside themselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from tlkeras.errors import TlkerasError
from tlkeras.files import sha256_file
from tlkeras.inputs import pipeline
from tlkeras.inputs.base import InputKind, InputSpec, check_files, map_files

SERVING_DEFAULT = "serving_default"
SERVING_IMAGES = "serving_images"
IMAGE_BYTES = "image_bytes"
IMAGES = "images"
DEFAULT_SIZE = (224, 224)
# What tf.io.decode_image reads. PIL opens more (TIFF, ICO, ...), which would then fail mid-epoch: those are
# converted to PNG before training (`convert_for_tensorflow`).
TF_DECODABLE = {"JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP"}
TF_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Formats Pillow decodes and TensorFlow does not, by extension: read from folders, converted once.
CONVERTED_EXTENSIONS = (".tif", ".tiff", ".ico", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".pcx", ".jp2", ".j2k",
                        ".qoi", ".dib", ".sgi", ".icns", ".psd", ".avif")
# Pillow's own decompression-bomb limit (89.5 Mpx): larger images are refused, not decoded.
MAX_PIXELS = 89_478_485
CONVERSION_VERSION = "v1"  # part of the cache path: bump it when the conversion changes


def decode(encoded, image_size: Sequence[int]):
    """tf.Tensor: one encoded image (JPEG, PNG, GIF, BMP, WebP; any size, grey or RGBA) as float32 RGB in
    [0, 255] of shape (H, W, 3). The one decoding both training and serving use.

    Args:
        encoded: scalar tf.string tensor. The file's bytes.
        image_size: (height, width).
    """
    import tensorflow as tf

    height, width = int(image_size[0]), int(image_size[1])
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    resized = tf.image.resize(image, (height, width), method="bilinear", antialias=False)
    return tf.cast(resized, tf.float32)


def decode_batch(image_bytes, image_size: Sequence[int]):
    """tf.Tensor: a batch of encoded images (B,) decoded with `decode` to (B, H, W, 3)."""
    import tensorflow as tf

    height, width = int(image_size[0]), int(image_size[1])
    return tf.map_fn(lambda encoded: decode(encoded, (height, width)), image_bytes,
                     fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))


def image_size_pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                                 for s in size):
        raise TlkerasError(f"image_size must be a positive int or (height, width). Received: image_size={image_size}")
    return int(size[0]), int(size[1])


def file_problem(path: str) -> str | None:
    """str or None: why an image file cannot be trained on (None when it decodes).

    The file is opened, verified and fully decoded with PIL (JPEGs at reduced scale, which still reads
    every byte). Formats PIL reads but `tf.io.decode_image` does not (TIFF, ...) count as bad: reading
    data converts them first (`convert_for_tensorflow`). Images over `MAX_PIXELS` are refused undecoded.
    """
    import warnings

    from PIL import Image

    if os.path.islink(path) and not os.path.exists(path):
        return f"a symlink to {os.readlink(path)}, which does not exist: fix or remove the link"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image_format, (width, height) = image.format, image.size
                if width * height > MAX_PIXELS:
                    return _too_large(width, height)
                image.verify()
            if conversion_reason(path) is not None:
                return f"{image_format} is not decodable by TensorFlow; convert to PNG or JPEG"
            with Image.open(path) as image:  # verify() leaves the image unusable: open again to decode
                if image_format == "JPEG":
                    image.draft(image.mode, (1, 1))
                image.load()
    except Image.DecompressionBombError as error:  # PIL refuses to open it at all: it gives only the pixel count
        import re

        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "its size"
        return (f"{size} is over the {MAX_PIXELS / 1e6:.0f} megapixel limit (a decompression bomb, or a huge "
                f"scan): resize it")
    except PermissionError:
        return "cannot be read (permission denied): make it readable (chmod +r) or remove it"
    except Exception as error:  # any failure means the file cannot be trained on
        return f"{type(error).__name__}: {error}"
    return None


def _too_large(width: int, height: int) -> str:
    return (f"{width}x{height} pixels ({width * height / 1e6:.0f} megapixels) is over the {MAX_PIXELS / 1e6:.0f} "
            f"megapixel limit (a decompression bomb, or a huge scan): resize it")


def conversion_reason(path: str) -> str | None:
    """str or None: the format name (e.g. "TIFF", "animated WebP") when `tf.io.decode_image` cannot decode
    the image, or decodes it wrongly (palette BMPs), but PIL can; None when TensorFlow reads it as it is,
    or when PIL cannot open it either (then `file_problem` says why)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                fmt, mode, frames = image.format, image.mode, getattr(image, "n_frames", 1)
                compression = image.info.get("compression", 0)
                if image.size[0] * image.size[1] > MAX_PIXELS:
                    return None  # refused by file_problem, not converted
    except Exception:  # noqa: BLE001 - unreadable: file_problem reports it
        return None
    if fmt not in TF_DECODABLE:
        return fmt
    if fmt == "BMP" and (mode not in ("RGB", "RGBA", "L") or compression != 0):
        return "palette or compressed BMP"  # TensorFlow ignores BMP palettes and compression
    if fmt == "WEBP" and frames > 1:
        return "animated WebP"
    return None


def convert_for_tensorflow(path: str) -> str:
    """str: the path of `path` converted to an RGB PNG (the first frame of an animation; 16-bit and float
    images scaled to 8 bits), in `$TLKERAS_HOME/converted`, keyed by the file's sha256 so each image is
    converted once. The file is written atomically.
    """
    import io

    from PIL import Image

    from tlkeras import files, paths

    target = paths.converted_dir() / CONVERSION_VERSION / f"{sha256_file(path)}.png"
    if target.is_file():
        return str(target)
    with Image.open(path) as image:
        image.seek(0)
        rgb = _to_rgb(image)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    files.write_bytes(target, buffer.getvalue())
    return str(target)


def _to_rgb(image):
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit, 32-bit or float: scale, do not clip
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode == "F" and pixels.size and np.nanmax(pixels) <= 1.0:
            pixels = pixels * 255.0
        elif image.mode != "F" and pixels.size and pixels.max() > 255:
            pixels = pixels / 257.0  # as TensorFlow reads 16-bit PNGs
        image = Image.fromarray(np.clip(np.nan_to_num(pixels), 0, 255).round().astype(np.uint8), "L")
    return image.convert("RGB")


def array_dataset(images: np.ndarray, targets, image_size, batch_size: int, shuffle: bool = False, seed: int = 0,
                  augment: Callable | None = None, repeat: bool = False):
    """tf.data.Dataset: batches of `(pixels, targets)` from images in memory, as `ImageKind.dataset` yields.

    Args:
        images: np.ndarray. (N, h, w) or (N, h, w, c) with c in 1 (grey), 3 (RGB) or 4 (RGBA, alpha is
            dropped); uint8, or floats already in [0, 255].
        targets, image_size, batch_size, shuffle, seed, augment, repeat: as in `ImageKind.dataset`.

    Example:
    >>> (x, y), _ = tlkeras.datasets.load_fashion_mnist_arrays()
    >>> ds = array_dataset(x, y, image_size=224, batch_size=32)
    """
    import tensorflow as tf

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise TlkerasError(f"images must have shape (N, h, w) or (N, h, w, 1|3|4). Received: shape={images.shape}")
    _check_pixel_range(images)
    height, width = image_size_pair(image_size)
    channels = images.shape[-1]

    def to_pixels(batch):
        batch = tf.cast(batch, tf.float32)
        if channels == 1:
            batch = tf.image.grayscale_to_rgb(batch)
        elif channels == 4:
            batch = batch[..., :3]
        return tf.image.resize(batch, (height, width), method="bilinear", antialias=False)

    # Batch before converting: the shuffle buffer keeps the compact dtype, and resizing runs per batch.
    ds = pipeline.shuffled(pipeline.slices(images, targets), len(images), shuffle, seed, repeat).batch(batch_size)
    ds = pipeline.map_inputs(ds, to_pixels, targets is not None)
    return pipeline.finish(ds, targets is not None, augment)


def _check_pixel_range(images: np.ndarray) -> None:
    if images.size == 0:
        return
    top = images.max()
    if np.issubdtype(images.dtype, np.floating) and top <= 1.0:
        raise TlkerasError(f"images look scaled to [0, 1]; tlkeras expects pixels in [0, 255]: pass "
                           f"images * 255. Received: max={top}")
    if np.issubdtype(images.dtype, np.integer) and top > 255:
        raise TlkerasError(f"integer images must hold 8-bit pixels in [0, 255]: rescale them. "
                           f"Received: dtype={images.dtype}, max={top}")


def sample_images(image_size: Sequence[int]) -> list[np.ndarray]:
    """list: two RGB uint8 images (a gradient and its mirror) at `image_size`, for warm-up requests."""
    height, width = int(image_size[0]), int(image_size[1])
    rows = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    cols = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    gradient = np.stack([np.broadcast_to(rows, (height, width)), np.broadcast_to(cols, (height, width)),
                         (rows + cols) / 2], axis=-1).astype(np.uint8)
    return [gradient, gradient[::-1, ::-1].copy()]


class ImageKind(InputKind):
    name = "image"
    file_extensions = TF_EXTENSIONS + CONVERTED_EXTENSIONS
    table_column = "path"
    spec_fields = ("image_size",)

    def spec(self, entry, data) -> InputSpec:
        size = tuple((data.image_size if data is not None else ()) or entry.input_size or DEFAULT_SIZE)
        return InputSpec(self.name, image_size=image_size_pair(size))

    def parse_spec(self, raw) -> InputSpec:
        size = raw.get("image_size")
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
            raise TlkerasError(f"config.yaml 'input.image_size' must be [height, width] in pixels. "
                               f"Received: image_size={size!r}")
        return InputSpec(self.name, image_size=(int(size[0]), int(size[1])))

    def check(self, items, skip):
        return check_files(items, file_problem, "images cannot be decoded", skip)

    def prepare_inputs(self, items):
        paths, reasons = map_files(conversion_reason, items)
        if not any(reasons):
            return paths, []
        todo = [i for i, reason in enumerate(reasons) if reason]
        _, converted = map_files(_converted_or_none, [paths[i] for i in todo])
        for i, new in zip(todo, converted, strict=True):
            if new is not None:
                paths[i] = new
        counts: dict[str, int] = {}
        for i, new in zip(todo, converted, strict=True):
            if new is not None:
                counts[reasons[i]] = counts.get(reasons[i], 0) + 1
        if not counts:
            return paths, []
        from tlkeras import paths as tlkeras_paths

        kinds = ", ".join(f"{n} {fmt}" for fmt, n in sorted(counts.items()))
        return paths, [f"converted {kinds} images to PNG, which TensorFlow cannot decode as they are (cached in "
                       f"{tlkeras_paths.converted_dir()})"]

    def fingerprint_item(self, item):
        try:
            stat = os.stat(item)
        except OSError as error:
            raise TlkerasError(f"image file disappeared: {item} ({error.strerror})") from error
        return f"{item}\0{stat.st_size}\0{stat.st_mtime_ns}".encode("utf-8", "surrogatepass")

    def content_key(self, item):
        return sha256_file(item)

    def network_input(self, spec):
        import keras

        return keras.Input(shape=(*spec.image_size, 3), dtype="float32", name="pixels")

    def feature_extractor(self, entry, network, spec):
        import keras

        pixels = keras.Input(shape=(*spec.image_size, 3), dtype="float32", name="pixels")
        x = _normalization(entry, spec)(pixels)
        if isinstance(network.input, dict) and len(network.input) == 1:  # keras-hub ViTs take {"images": x}
            x = {next(iter(network.input)): x}
        features = network(x)
        if len(features.shape) == 4:  # a feature map: pool it as the entry says
            pool = keras.layers.GlobalMaxPooling2D if entry.pooling == "max" else keras.layers.GlobalAveragePooling2D
            features = pool(name="pool")(features)
        elif len(features.shape) == 3:  # transformer tokens
            from tlkeras.layers import TOKEN_POOLING

            # The class token, or the mean of all tokens for any other pooling.
            features = TOKEN_POOLING["cls" if entry.pooling == "cls" else "mean"](name="pool")(features)
        return keras.Model(pixels, features, name=entry.name)

    def dataset(self, inputs, targets, spec, batch_size, preprocessor=None, shuffle=False, seed=0, augment=None,
                repeat=False, first_epoch=None, view="identity"):
        import tensorflow as tf

        size = spec.image_size
        paths = [str(p) for p in inputs]
        flip = view == "flip"

        def read(path):
            pixels = decode(tf.io.read_file(path), size)
            return tf.image.flip_left_right(pixels) if flip else pixels

        def batches(ds):
            return pipeline.map_inputs(ds, read, targets is not None).batch(batch_size)

        if first_epoch is not None:
            return pipeline.finish(pipeline.epochs(paths, targets, seed, first_epoch, batches), targets is not None,
                                   augment)
        ds = pipeline.shuffled(pipeline.slices(paths, targets), len(inputs), shuffle, seed, repeat)
        return pipeline.finish(batches(ds), targets is not None, augment)

    def feature_views(self, config):
        import dataclasses

        if not config.enabled():
            return ("identity",)
        if config.flip == "horizontal" and not dataclasses.replace(config, flip="none").enabled():
            return ("identity", "flip")  # mirrors are deterministic: cache their features too
        return None

    def augmenter(self, config, seed, mix_labels):
        if not config.enabled():
            return None
        pixels = pixel_augmenter(config, seed)
        mixer = label_mixer(config, seed) if mix_labels else None

        def augment(images, labels):
            if pixels is not None:
                images = pixels(images, training=True)
            if mixer is not None:
                images, labels = mixer(images, labels)
            return images, labels

        return augment

    def adapt(self, inputs, spec_in, spec_out):
        import keras

        if spec_in.image_size == spec_out.image_size:
            return inputs
        h, w = spec_out.image_size  # the same bilinear resize, no antialiasing, as decoding does
        return keras.layers.Resizing(h, w, interpolation="bilinear", name=f"resize_{h}x{w}")(inputs)

    tta_views = ("identity", "flip")

    def test_time_augmented(self, model):
        import keras

        from tlkeras.layers import HorizontalFlip

        pixels = keras.Input(shape=model.input_shape[1:], dtype="float32", name="pixels")
        mean = keras.layers.Average(name="tta_mean")([model(pixels), model(HorizontalFlip(name="tta_flip")(pixels))])
        return keras.Model(pixels, mean, name=f"{model.name}_tta")

    def signatures(self, model, spec, task, labels, threshold, preprocessor=None):
        import tensorflow as tf

        height, width = spec.image_size

        def outputs(pixels):
            scores = tf.cast(_single_output(model(pixels, training=False)), tf.float32)
            return task.postprocess(scores, labels, threshold)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
        def serve_bytes(image_bytes):
            return outputs(decode_batch(image_bytes, (height, width)))

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name=IMAGES)])
        def serve_images(images):
            return outputs(tf.cast(images, tf.float32))

        return {SERVING_DEFAULT: serve_bytes, SERVING_IMAGES: serve_images}

    def warmup_inputs(self, spec):
        import tensorflow as tf

        images = sample_images(spec.image_size)
        # A different size from the model's, so the resize path runs too.
        jpegs = [tf.io.encode_jpeg(tf.image.resize(image, (37, 53)).numpy().astype("uint8")).numpy()
                 for image in images]
        return [
            (SERVING_DEFAULT, {IMAGE_BYTES: np.array(jpegs[:1], dtype=object)}),
            (SERVING_DEFAULT, {IMAGE_BYTES: np.array(jpegs, dtype=object)}),
            (SERVING_IMAGES, {IMAGES: np.stack(images)}),
        ]

    def preprocessing_description(self, spec, preprocessor=None):
        h, w = spec.image_size
        return ("tf.io.decode_image(channels=3, expand_animations=False) -> uint8 RGB (first GIF frame, alpha "
                f"dropped) -> tf.image.resize({h}, {w}, bilinear, antialias=False), no crop -> float32 in "
                "[0, 255]; the model normalises inside")

    def describe_example(self, item):
        from PIL import Image

        with Image.open(item) as image:
            image = image.convert("RGB")
            image.thumbnail((96, 96))
            import io

            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
        return {"image": buffer.getvalue(), "text": os.path.basename(item)}


def _converted_or_none(path: str) -> str | None:
    try:
        return convert_for_tensorflow(path)
    except Exception:  # noqa: BLE001 - left as it is: the file check names the problem
        return None


def pixel_augmenter(config, seed: int = 0):
    """keras.Sequential or None: the per-image layers of an `augment:` section, on pixels in [0, 255].

    Keras 3 core layers, created here once: creating them inside a tf.data-mapped function fails.
    """
    import keras

    layers = []
    if config.flip != "none":
        layers.append(keras.layers.RandomFlip(config.flip, seed=seed))
    if config.rotation:
        layers.append(keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=seed))
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed))
    if config.translation:
        layers.append(keras.layers.RandomTranslation(config.translation, config.translation, fill_mode="reflect",
                                                     seed=seed))
    if config.contrast:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed))
    if config.rand_augment:
        layers.append(keras.layers.RandAugment(value_range=(0, 255), seed=seed))
    if config.random_erasing:
        layers.append(keras.layers.RandomErasing(factor=config.random_erasing, value_range=(0, 255), seed=seed))
    return keras.Sequential(layers, name="augment") if layers else None


def label_mixer(config, seed: int = 0):
    """MixUp and/or CutMix as a function on (images, one-hot labels) batches; None if neither is set."""
    import keras

    mixers = []
    if config.mixup:
        mixers.append(keras.layers.MixUp(alpha=config.mixup, seed=seed))
    if config.cutmix:
        mixers.append(keras.layers.CutMix(factor=config.cutmix, seed=seed))
    if not mixers:
        return None

    def mix(images, labels):
        for mixer in mixers:
            out = mixer({"images": images, "labels": labels}, training=True)
            images, labels = out["images"], out["labels"]
        return images, labels

    return mix


def _normalization(entry, spec):
    if entry.source == "keras_hub":  # keras-hub presets carry their normalisation in an ImageConverter
        import keras_hub

        return keras_hub.layers.ImageConverter.from_preset(entry.handle, image_size=tuple(spec.image_size))
    from tlkeras.layers import PixelNormalization

    return PixelNormalization(entry.pixel_mean, entry.pixel_std, entry.channel_order, name="pixel_normalization")


def _single_output(outputs):
    if isinstance(outputs, dict) and len(outputs) == 1:
        return next(iter(outputs.values()))
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        return outputs[0]
    return outputs
