"""A multilayer perceptron: Flatten → Dense(ReLU)… → Dense logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def build_mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128,)) -> Any:
    """Keras MLP with ReLU hidden layers and a linear (logit) output; ~100k params on 28×28."""
    import keras

    layers: list[Any] = [keras.Input(tuple(input_shape), name="image"), keras.layers.Flatten(name="flatten")]
    for i, units in enumerate(hidden):
        layers.append(keras.layers.Dense(units, activation="relu", name=f"dense_{i}"))
    layers.append(keras.layers.Dense(num_classes, name="logits"))
    return keras.Sequential(layers, name="mlp")
