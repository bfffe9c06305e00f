"""Passwords (argon2id), access tokens (JWT, HS256, with expiry) and what each role may do.

Deny by default: a route names the permission it needs (``api.deps.require``), and a permission not
in ``PERMISSIONS`` for a role is refused. The table is the whole policy, read at a glance.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ALGORITHM = "HS256"
AUDIENCE = "omniclinic"
MIN_PASSWORD_LENGTH = 12

PERMISSIONS: dict[str, frozenset[str]] = {
    "clinician": frozenset({"studies:read", "studies:upload", "ask", "reports:write", "reports:sign"}),
    "researcher": frozenset({"studies:read", "studies:upload", "ask", "reports:export"}),
    "auditor": frozenset({"audit:read"}),
    "admin": frozenset({"studies:read", "studies:upload", "studies:delete", "reports:export", "audit:read"}),
}
ROLES = tuple(PERMISSIONS)

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# A hash of nothing anyone knows: checked against for unknown users, so a login takes as long whether
# or not the name exists.
_DUMMY_HASH = _hasher.hash("omniclinic: no such user")


class TokenError(ValueError):
    """An access token that is missing, malformed, forged or expired (the message says which)."""


class WeakPassword(ValueError):
    """A password that does not meet the policy."""


def allowed(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


def check_password_policy(password: str, username: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if username.lower() in password.lower():
        raise WeakPassword("a password must not contain the user name")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; an unknown user (None) costs the same time and is False."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def create_token(username: str, role: str, secret: str, minutes: int) -> str:
    issued = datetime.now(UTC)
    claims = {
        "sub": username,
        "role": role,
        "aud": AUDIENCE,
        "iat": issued.timestamp(),  # to the microsecond: a credential change a moment later ends it
        "exp": issued + timedelta(minutes=minutes),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_token(token: str, secret: str) -> dict[str, object]:
    """The claims of a valid token (signature, audience, expiry checked).

    Raises:
        TokenError: anything else; the message never repeats the token.
    """
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], audience=AUDIENCE, options={"require": ["sub", "exp", "iat"]}
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the login has expired; log in again") from None
    except jwt.PyJWTError:
        raise TokenError("the access token is not valid") from None
    if not isinstance(claims.get("sub"), str):
        raise TokenError("the access token is not valid")
    return claims


class LoginThrottle:
    """Failed logins per (user name, address) in a sliding window; over the limit, logins pause.

    In-process: with several workers each counts its own, so the limit is per worker (documented).
    """

    def __init__(self, attempts: int, window_s: float) -> None:
        self.attempts, self.window_s = attempts, window_s
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        failures = self._failures[key]
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until another try is allowed (0: allowed now)."""
        now = time.monotonic()
        key = (username.lower()[:64], address)
        with self._lock:
            if key not in self._failures:
                return 0.0
            failures = self._recent(key, now)
            if not failures:
                del self._failures[key]  # nothing left to remember: the table holds recent failures only
                return 0.0
            if len(failures) < self.attempts:
                return 0.0
            return max(0.0, failures[0] + self.window_s - now)

    def failed(self, username: str, address: str) -> None:
        with self._lock:
            now = time.monotonic()
            if len(self._failures) > 100_000:  # a flood of names: forget the stale ones
                for stale in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window_s]:
                    del self._failures[stale]
            self._recent((username.lower()[:64], address), now).append(now)

    def succeeded(self, username: str, address: str) -> None:
        with self._lock:
            self._failures.pop((username.lower()[:64], address), None)
