"""A small CNN for 28×28 grey images: Conv-Pool-Conv-Pool-Dense (~109k params)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def build_cnn(input_shape: Sequence[int], num_classes: int, filters: tuple[int, int] = (16, 32), dense: int = 128) -> Any:
    """Keras CNN with a linear (logit) output. Small inputs (8×8 digits) use 'same' padding."""
    import keras

    padding = "valid" if min(input_shape[:2]) >= 16 else "same"
    return keras.Sequential(
        [
            keras.Input(tuple(input_shape), name="image"),
            keras.layers.Conv2D(filters[0], 3, activation="relu", padding=padding, name="conv_0"),
            keras.layers.MaxPooling2D(name="pool_0"),
            keras.layers.Conv2D(filters[1], 3, activation="relu", padding=padding, name="conv_1"),
            keras.layers.MaxPooling2D(name="pool_1"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(dense, activation="relu", name="dense_0"),
            keras.layers.Dense(num_classes, name="logits"),
        ],
        name="cnn",
    )
