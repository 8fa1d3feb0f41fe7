"""A small 1-D CNN for sequences ``(T, C)`` (sensor windows): Conv1D-Pool-Conv1D-GlobalPool-Dense."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def build_cnn1d(input_shape: Sequence[int], num_classes: int, filters: tuple[int, int] = (16, 32), kernel: int = 5) -> Any:
    """Keras 1-D CNN with a linear (logit) output; a few thousand parameters for a handful of channels."""
    import keras

    steps = int(input_shape[0])
    kernel = max(1, min(kernel, steps))
    layers: list[Any] = [
        keras.Input(tuple(input_shape), name="sequence"),
        keras.layers.Conv1D(filters[0], kernel, padding="same", activation="relu", name="conv_0"),
    ]
    if steps >= 4:
        layers.append(keras.layers.MaxPooling1D(2, name="pool_0"))
    layers += [
        keras.layers.Conv1D(filters[1], kernel, padding="same", activation="relu", name="conv_1"),
        keras.layers.GlobalAveragePooling1D(name="pool_1"),
        keras.layers.Dense(num_classes, name="logits"),
    ]
    return keras.Sequential(layers, name="cnn1d")
