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
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # Keras' 0.999 suits ImageNet-length training; from scratch on a small set the moving
            # statistics would stay near their initial values and inference would see nothing
            layer.momentum = 0.9
    logits = keras.layers.Dense(num_classes, name="logits")(backbone(inputs))
    return keras.Model(inputs, logits, name="mobilenet_v2")


def recalibrate_batch_norm(model: Any, x: Any) -> None:
    """Set every BatchNormalization's moving statistics to those of ``x`` (one forward pass).

    A randomly initialised network's moving statistics (0 and 1) make its activations vanish
    layer by layer at inference; with the statistics of real inputs it computes something
    realistic, which is what an export benchmark and its verification need.
    """
    import keras

    norms = [layer for layer in _walk(model) if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(norms, saved):
        layer.momentum = momentum


def _walk(model: Any) -> list[Any]:
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found.extend(_walk(layer))
    return found
