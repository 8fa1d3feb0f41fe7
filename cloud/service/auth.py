"""Per-device tokens, stored as sha256 hashes, and a per-device rate limit.

Tokens are 256 random bits, so a plain sha256 is enough: there is nothing to brute-force
that a slow hash would protect.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from cloud.service.db import Device
from device.errors import EdgeloopError


class DeviceExists(EdgeloopError):
    """A device with that name is already registered."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_device(sessions: sessionmaker, name: str) -> str:
    """Register ``name`` and return its new token (shown once; only its hash is stored)."""
    if not name or len(name) > 200:
        raise ValueError("a device name must be 1-200 characters")
    token = secrets.token_urlsafe(32)
    with sessions.begin() as s:
        if s.scalars(select(Device).where(Device.name == name)).first() is not None:
            raise DeviceExists(f"a device named {name!r} is already registered")
        s.add(Device(name=name, token_hash=hash_token(token), created=time.time(), samples_stored=0, dropped=0))
    return token


class TokenCache:
    """token hash -> device id, read through to the database (devices are never renamed)."""

    def __init__(self, sessions: sessionmaker) -> None:
        self.sessions = sessions
        self._cache: dict[str, int] = {}

    def device_id(self, token: str) -> int | None:
        digest = hash_token(token)
        hit = self._cache.get(digest)
        if hit is not None:
            return hit
        with self.sessions() as s:
            did = s.scalars(select(Device.id).where(Device.token_hash == digest)).first()
        if did is not None:
            self._cache[digest] = did
        return did


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per device: ``rate`` requests per second on average, bursts up to ``burst``."""

    rate: float = 5.0
    burst: int = 20

    def __post_init__(self) -> None:
        if not self.rate > 0 or self.burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {self.rate}, {self.burst}")


class RateLimiter:
    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: int, now: float | None = None) -> float:
        """0 if the request may go ahead, else the seconds to wait (for Retry-After)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.limit.burst), now))
            tokens = min(float(self.limit.burst), tokens + (now - last) * self.limit.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.limit.rate
