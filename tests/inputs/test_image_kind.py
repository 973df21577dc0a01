"""The image input kind: decoding, datasets from files and arrays, file checks, augmentation, signatures."""

import os

import numpy as np
import pytest
from conftest import add_corrupt_images, save_image

from tlkeras import inputs
from tlkeras.data import load_examples
from tlkeras.errors import TlkerasError
from tlkeras.inputs import InputSpec
from tlkeras.inputs.image import array_dataset

IMAGE = inputs.get("image")


def image_dataset(paths, targets, image_size, batch_size, **options):
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return IMAGE.dataset(paths, targets, InputSpec("image", image_size=size), batch_size, **options)


def test_image_dataset_yields_rgb_float_pixels_of_one_size(image_folder):
    examples = load_examples(image_folder, task="classification")
    batches = list(image_dataset(examples.inputs, examples.targets, image_size=(20, 24), batch_size=4))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 20, 24, 3), (2, 20, 24, 3)]
    pixels = np.concatenate([x.numpy() for x, _ in batches])
    targets = np.concatenate([y.numpy() for _, y in batches])
    assert pixels.dtype == np.float32 and pixels.min() >= 0 and pixels.max() <= 255
    np.testing.assert_array_equal(targets, examples.targets)
    by_name = dict(zip([os.path.basename(p) for p in examples.inputs], pixels, strict=True))
    np.testing.assert_allclose(by_name["grey.png"], 200, atol=1)  # grey copied to all three channels
    np.testing.assert_allclose(by_name["rgba.png"], 50, atol=1)  # alpha dropped, colour kept
    np.testing.assert_allclose(by_name["rgb.png"], 255, atol=1)


def test_image_dataset_shuffles_with_seed_and_applies_augment(image_folder):
    examples = load_examples(image_folder, task="classification")

    def order(seed):
        ds = image_dataset(examples.inputs, np.arange(len(examples)), 8, batch_size=6, shuffle=True, seed=seed)
        return next(iter(ds))[1].numpy().tolist()

    assert order(1) == order(1)
    assert sorted(order(1)) == list(range(6))
    assert any(order(1) != order(s) for s in (2, 3, 4))
    ds = image_dataset(examples.inputs, examples.targets, 8, batch_size=6, augment=lambda x, y: (255.0 - x, y))
    x, _ = next(iter(ds))
    np.testing.assert_allclose(x.numpy()[examples.inputs.index(str(image_folder / "dog" / "rgb.png"))], 0,
                               atol=1)


def test_array_image_dataset_turns_grey_and_rgba_arrays_into_rgb():
    grey = np.stack([np.full((28, 28), v, np.uint8) for v in (0, 100, 255)])
    x, y = next(iter(array_dataset(grey, np.array([0, 1, 2]), image_size=32, batch_size=3)))
    assert x.shape == (3, 32, 32, 3) and x.dtype == "float32"
    np.testing.assert_allclose(x.numpy()[:, 0, 0, :], [[0] * 3, [100] * 3, [255] * 3])
    np.testing.assert_array_equal(y.numpy(), [0, 1, 2])
    rgba = np.zeros((2, 5, 5, 4), np.float32)
    rgba[..., 3] = 255.0
    rgba[..., 0] = 9.0
    x = next(iter(array_dataset(rgba, None, image_size=(5, 7), batch_size=2)))
    assert x.shape == (2, 5, 7, 3)
    np.testing.assert_allclose(x.numpy()[..., 0], 9.0)
    np.testing.assert_allclose(x.numpy()[..., 1:], 0.0)


def test_array_image_dataset_refuses_pixels_scaled_to_unit_range():
    with pytest.raises(TlkerasError, match=r"\* 255"):
        array_dataset(np.full((2, 4, 4), 0.5, np.float32), None, 8, 2)


def test_corrupt_images_raise_naming_the_files(image_folder):
    add_corrupt_images(image_folder)
    examples = load_examples(image_folder, task="classification")
    with pytest.raises(TlkerasError, match="skip_corrupt") as error:
        IMAGE.check(examples.inputs, skip=False)
    assert "truncated.jpg" in str(error.value) and "random.jpg" in str(error.value)
    assert "2 of 8 images" in str(error.value)


def test_corrupt_images_are_skipped_and_reported(image_folder):
    add_corrupt_images(image_folder)
    examples = load_examples(image_folder, task="classification")
    ok, bad = IMAGE.check(examples.inputs, skip=True)
    assert sorted(os.path.basename(p) for p, _ in bad) == ["random.jpg", "truncated.jpg"]
    assert ok.sum() == 6
    kept = examples.select(ok)
    assert not any(p.endswith(("random.jpg", "truncated.jpg")) for p in kept.inputs)
    assert len(list(image_dataset(kept.inputs, kept.targets, 8, batch_size=8))) == 1


def test_images_tensorflow_cannot_decode_are_bad(tmp_path):
    tiff = save_image(tmp_path / "a.png", "RGB", (4, 4), fmt="TIFF")  # a TIFF hiding behind .png
    ok, bad = IMAGE.check([tiff], skip=True)
    assert not ok[0] and "TIFF" in bad[0][1]


def test_check_images_is_fast_on_thousands_of_small_images(tmp_path):
    import time

    paths = [save_image(tmp_path / f"{i}.png", "L", (28, 28)) for i in range(2000)]
    start = time.perf_counter()
    ok, _ = IMAGE.check(paths, skip=False)
    assert ok.all()
    assert time.perf_counter() - start < 10
