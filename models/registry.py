"""Keras builders by name, each with the input it expects, its preprocessing and its labels.

A builder, its normalization and its labels travel together so that an exported bundle
can describe its own preprocessing to a device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.cnn import build_cnn
from models.cnn1d import build_cnn1d
from models.mlp import build_mlp
from models.mobilenet import build_mobilenet_v2

DIGIT_LABELS: tuple[str, ...] = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class ModelSpec:
    """A named model family: ``build(input_shape, num_classes)`` returns a fresh Keras model."""

    name: str
    builder: Callable[..., Any]
    input_shape: tuple[int, ...] = (28, 28, 1)
    normalization: tuple[float, float] = (0.0, 255.0)  # (mean, std): model input = (raw - mean) / std
    labels: tuple[str, ...] = DIGIT_LABELS
    description: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    layouts: tuple[str, ...] = ()  # the data layouts it takes (image, vector, sequence); () = any

    def build(self, input_shape: Sequence[int] | None = None, num_classes: int | None = None) -> Any:
        """A new, untrained model; call ``keras.utils.set_random_seed`` first for reproducible weights."""
        return self.builder(
            tuple(input_shape or self.input_shape), int(num_classes or len(self.labels)), **self.kwargs
        )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("mlp", build_mlp, description="Flatten-Dense(128)-Dense(N): vectors, or anything flattened; "
                  "~102k params on 28x28"),
        ModelSpec("cnn", build_cnn, description="Conv16-Pool-Conv32-Pool-Dense128-Dense10, ~109k params on 28x28",
                  layouts=("image",)),
        ModelSpec("cnn1d", build_cnn1d, input_shape=(50, 3), normalization=(0.0, 1.0),
                  description="Conv1D16-Pool-Conv1D32-GlobalAvgPool-Dense(N) for sequences (T, C)",
                  layouts=("sequence",)),
        ModelSpec("mobilenet-v2", build_mobilenet_v2, input_shape=(96, 96, 3),
                  description="MobileNetV2 alpha 0.35, 96x96x3, batch norm, random init (~0.4M params)",
                  layouts=("image",)),
        ModelSpec(
            "mlp-small",
            build_mlp,
            input_shape=(8, 8, 1),
            normalization=(0.0, 16.0),
            description="MLP 64-32-10 for sklearn's 8x8 digits",
            kwargs={"hidden": (32,)},
        ),
    )
}


def get_model(name: str) -> ModelSpec:
    """The spec registered as ``name``; a KeyError lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
