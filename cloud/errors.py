"""Errors of the cloud side; all derive from :class:`device.errors.EdgeloopError`."""

from __future__ import annotations

from device.errors import EdgeloopError


class DataError(EdgeloopError, ValueError):
    """A data source is missing, unreadable or malformed; the message names the file."""


class CheckpointError(EdgeloopError):
    """A training run cannot be resumed: no checkpoint, or one made with another config."""


class ExportVerificationError(EdgeloopError):
    """An exported .tflite disagrees with its Keras model beyond tolerance, or is non-finite."""
