"""Exceptions raised by the device runtime.

Each names the file, field or value at fault and what was expected, so the CLI can
print it without a traceback and a caller can catch exactly what it can handle.
"""

from __future__ import annotations


class EdgeloopError(Exception):
    """Base class of every error edgeloop raises on purpose."""


class BundleError(EdgeloopError):
    """A bundle or .tflite file is missing, unreadable, malformed or not a TFLite model."""


class IntegrityError(BundleError):
    """A bundle's .tflite does not match the sha256 its manifest records."""


class InputError(EdgeloopError, ValueError):
    """An input has the wrong shape, rank, dtype, or holds non-finite values."""


class ImageReadError(InputError):
    """An image file cannot be opened or decoded."""


class InterpreterUnavailableError(EdgeloopError):
    """No TFLite interpreter (LiteRT, tflite-runtime or TensorFlow) can be imported."""


class UpdateRejected(EdgeloopError):
    """A downloaded model update failed its sha256, signature or health check; the old model stays."""


class CollectorError(EdgeloopError):
    """The on-device sample queue cannot be opened or written."""


class NotTrainableError(BundleError):
    """A bundle without the ``train``/``get_weights``/``set_weights`` signatures was asked to train."""


class TaskError(EdgeloopError, ValueError):
    """A call that the model's task does not support, such as ranking classes of a regression model."""
