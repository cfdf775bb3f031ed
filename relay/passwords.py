"""Account password hashing with Argon2id (argon2-cffi); verification runs off the event loop."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()

# A hash of a random string, verified against when the username is unknown so that a wrong
# username costs as much time as a wrong password (no username oracle by timing).
_DUMMY_HASH = _HASHER.hash("optin-relay-no-such-account")


def hash_password(password: str) -> str:
    """Return an Argon2id hash of `password` in PHC string form."""
    if not password:
        raise ValueError("the password is empty")
    return _HASHER.hash(password)


def is_password_hash(value: str) -> bool:
    """Say whether `value` looks like a hash made by `hash_password`."""
    return value.startswith("$argon2")


def verify_password(password_hash: str | None, password: str) -> bool:
    """Check `password` against `password_hash` (None: unknown user, always False)."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


async def verify_password_async(password_hash: str | None, password: str) -> bool:
    """`verify_password` in a worker thread: Argon2 takes tens of milliseconds of CPU."""
    return await asyncio.to_thread(verify_password, password_hash, password)
