"""Keras layers tlkeras puts around pre-trained networks: input normalisation and pooling. They are
registered as serialisable, so saved models reload wherever `tlkeras.layers` is imported."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tlkeras")
class PixelNormalization(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to what a pre-trained network expects: `(x - mean) / std`.

    Args:
        mean: list of 3 floats. Per-channel mean, in the network's channel order.
        std: list of 3 floats. Per-channel standard deviation.
        channel_order: str. "RGB" or "BGR"; "BGR" flips the channels first.

    Example:
    >>> PixelNormalization(mean=[127.0] * 3, std=[128.0] * 3)(np.full((1, 2, 2, 3), 255.0))
    """

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order="RGB", **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.channel_order = channel_order

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.channel_order == "BGR":
            x = ops.flip(x, axis=-1)
        return (x - ops.array(self.mean, dtype=x.dtype)) / ops.array(self.std, dtype=x.dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std,
                "channel_order": self.channel_order}


@keras.saving.register_keras_serializable(package="tlkeras")
class MaskedMeanPooling(keras.layers.Layer):
    """Averages token vectors over the positions where `padding_mask` is set.

    Call with `(sequence, padding_mask)`: float (B, L, H) and int/bool (B, L). Returns (B, H).
    """

    def call(self, sequence, padding_mask):
        mask = ops.expand_dims(ops.cast(padding_mask, sequence.dtype), -1)
        total = ops.sum(sequence * mask, axis=1)
        return total / ops.maximum(ops.sum(mask, axis=1), 1e-9)


@keras.saving.register_keras_serializable(package="tlkeras")
class FirstTokenPooling(keras.layers.Layer):
    """Takes the vector of the first token ([CLS]) from (B, L, H)."""

    def call(self, sequence, padding_mask=None):
        return sequence[:, 0, :]


@keras.saving.register_keras_serializable(package="tlkeras")
class TokenMeanPooling(keras.layers.Layer):
    """Averages all token vectors of (B, L, H), e.g. the patch tokens of a vision transformer."""

    def call(self, sequence, padding_mask=None):
        return ops.mean(sequence, axis=1)


class LastTokenPooling(keras.layers.Layer):
    """Takes the vector of the last token where `padding_mask` is set: what a causal decoder has read
    the whole text into.

    Call with `(sequence, padding_mask)`: float (B, L, H) and int/bool (B, L). Returns (B, H). The last
    set position is found row by row, so right-padded (and left-padded) batches are both right; a row
    with no token set gets position 0.

    Example:
    >>> LastTokenPooling()(np.arange(6.0).reshape(1, 3, 2), np.array([[1, 1, 0]]))
    array([[2., 3.]])
    """

    def call(self, sequence, padding_mask):
        positions = ops.arange(ops.shape(sequence)[1], dtype="int32")
        set_positions = ops.where(ops.cast(padding_mask, "bool"), positions[None, :], -1)
        last = ops.maximum(ops.max(set_positions, axis=1), 0)
        return ops.take_along_axis(sequence, last[:, None, None], axis=1)[:, 0, :]


@keras.saving.register_keras_serializable(package="tlkeras")
class HorizontalFlip(keras.layers.Layer):
    """Mirrors a batch of images (B, H, W, C) left to right, always: test-time augmentation's second view."""

    def call(self, images):
        return ops.flip(images, axis=2)


TEXT_POOLING = {"mean": MaskedMeanPooling, "cls": FirstTokenPooling, "last": LastTokenPooling}
TOKEN_POOLING = {"cls": FirstTokenPooling, "mean": TokenMeanPooling}
