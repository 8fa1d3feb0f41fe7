"""MobileNetV2 (Sandler et al., 2018) as Keras ships it, randomly initialised: nothing can be downloaded.

Width multiplier ``alpha`` 0.35 at 96×96×3 is the smallest standard configuration (~0.4 M
parameters with a 5-class head), with batch normalization after every convolution; the
converter folds it into the convolutions on export.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def build_mobilenet_v2(input_shape: Sequence[int], num_classes: int, alpha: float = 0.35) -> Any:
    """MobileNetV2 feature extractor (``weights=None``) + global pooling + a linear (logit) Dense head."""
    import keras

    inputs = keras.Input(tuple(input_shape), name="image")
    backbone = keras.applications.MobileNetV2(input_shape=tuple(input_shape), alpha=alpha, include_top=False,
                                              weights=None, pooling="avg")
    logits = keras.layers.Dense(num_classes, name="logits")(backbone(inputs))
    return keras.Model(inputs, logits, name="mobilenet_v2")
