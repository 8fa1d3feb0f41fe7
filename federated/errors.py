"""Errors of the federated package: every one derives from :class:`FederatedError`."""

from __future__ import annotations

from collections.abc import Mapping


class FederatedError(Exception):
    """Base class of the federated package's errors."""


class ConfigError(FederatedError, ValueError):
    """A federated configuration holds an invalid value; the message names the field."""


class UpdateRejected(FederatedError):
    """One client update failed validation (shape, dtype, non-finite values, norm bound)."""

    def __init__(self, client_id: str, reason: str) -> None:
        super().__init__(f"update from {client_id!r} rejected: {reason}")
        self.client_id = client_id
        self.reason = reason


class RoundRefused(FederatedError):
    """Too few valid updates to aggregate; the global model and the server state are unchanged."""

    def __init__(self, message: str, rejected: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.rejected: dict[str, str] = dict(rejected or {})


class StateError(FederatedError):
    """A server checkpoint is missing, unreadable, or does not match the configuration."""
