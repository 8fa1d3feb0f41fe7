"""Per-device tokens (stored as sha256 hashes, revocable), the admin token, and rate limits.

Tokens are 256 random bits, so a plain sha256 is enough: there is nothing to brute-force
that a slow hash would protect. A device token is looked up in the database on every
request, so a revocation (``edgeloop cloud revoke-device``) or a changed hash takes effect
on the next request, in every server process. The admin token (``serve --admin-token-file``)
guards the dashboard, the version listing and the API docs: :func:`admin_guard` makes the one
dependency every admin endpoint uses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from cloud.service.db import Device
from cloud.service.epochs import TOKENS, EpochCache, Snapshot, bump
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


class UnknownDevice(EdgeloopError):
    """No device is registered under that name."""


REVOKED_PREFIX = "revoked-"


def revoke_device(sessions: sessionmaker, name: str) -> None:
    """Make ``name``'s token useless at once (its hash is replaced by a random value no token hashes to)."""
    with sessions.begin() as s:
        done = s.execute(update(Device).where(Device.name == name)
                         .values(token_hash=REVOKED_PREFIX + secrets.token_hex(24))).rowcount
        bump(s, TOKENS)  # every process drops its cached tokens before its next request
    if not done:
        raise UnknownDevice(f"no device named {name!r} is registered")


class TokenCache:
    """token -> device id: an indexed lookup of a unique hash, cached in this process until a revocation.

    A revoked or rotated token must stop working at once, also in a server process other than the
    one that changed it: :func:`revoke_device` moves the "tokens" change counter in the same
    transaction, and an entry is used only under the counter value the request read
    (:class:`cloud.service.epochs.EpochCache`). Unknown tokens are never cached, so a new device
    works at once too. Without a cache or a snapshot every call asks the database.
    """

    def __init__(self, sessions: sessionmaker, cache: EpochCache | None = None) -> None:
        self.sessions, self.cache = sessions, cache

    def device_id(self, token: str, snap: Snapshot | None = None) -> int | None:
        if not token or len(token) > 256:
            return None
        digest = hash_token(token)

        def lookup() -> int | None:
            with self.sessions() as s:
                return s.scalars(select(Device.id).where(Device.token_hash == digest)).first()

        if self.cache is None or snap is None:
            return lookup()
        return self.cache.get(snap, TOKENS, digest, lookup, cache_none=False)


MIN_ADMIN_TOKEN = 16


def read_admin_token(path: Path | str) -> str:
    """The admin token from a file (its first line, stripped); at least 16 characters."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeloopError(f"{path}: cannot read the admin token ({exc})") from None
    if len(token) < MIN_ADMIN_TOKEN or any(c.isspace() for c in token):
        raise EdgeloopError(f"{path}: an admin token is one line of at least {MIN_ADMIN_TOKEN} characters "
                            "without spaces (e.g. 'python -c \"import secrets; print(secrets.token_urlsafe(32))\"')")
    return token


def admin_token_matches(authorization: str | None, expected: str) -> bool:
    """Whether an ``Authorization`` header carries the admin token: ``Bearer TOKEN``, or HTTP Basic with the
    token as password (so a browser can open the dashboard). Compared in constant time."""
    if not authorization or len(authorization) > 1024:
        return False
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, ValueError):
            return False
    else:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def admin_guard(expected: str | None) -> Callable[[str | None], None]:
    """A check for admin endpoints: raises HTTP 401 (asking for credentials) unless the request carries
    ``expected``; with no admin token configured the endpoints are off (HTTP 404)."""
    from fastapi import HTTPException

    def check(authorization: str | None) -> None:
        if expected is None:
            raise HTTPException(404, "admin endpoints are off; start the server with --admin-token-file")
        if not admin_token_matches(authorization, expected):
            raise HTTPException(401, "admin token required ('Authorization: Bearer <admin token>')",
                                headers={"WWW-Authenticate": 'Basic realm="edgeloop admin"'})

    return check


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
