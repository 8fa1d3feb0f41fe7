"""edgeloop's device runtime: numpy and a TFLite interpreter (LiteRT), never TensorFlow.

>>> from device import Runtime
>>> rt = Runtime("models/bundles/mnist-cnn-int8")        # doctest: +SKIP
>>> rt.classify(image)[0].label                           # doctest: +SKIP
"""

from device.errors import (
    BundleError,
    EdgeloopError,
    ImageReadError,
    InputError,
    IntegrityError,
    InterpreterUnavailableError,
    TaskError,
)
from device.runtime.bundle import Manifest, read_manifest
from device.runtime.runtime import Prediction, Runtime

__all__ = [
    "BundleError",
    "EdgeloopError",
    "ImageReadError",
    "InputError",
    "IntegrityError",
    "InterpreterUnavailableError",
    "Manifest",
    "Prediction",
    "Runtime",
    "TaskError",
    "read_manifest",
]
