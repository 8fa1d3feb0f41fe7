"""Errors of the TFF-parity check."""

from __future__ import annotations


class ParityError(ValueError):
    """A parity plan or exchange file is malformed (names the field and what was expected)."""


class TFFRunError(RuntimeError):
    """The TFF side failed, timed out, or its environment is missing."""
