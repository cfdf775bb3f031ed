"""Account password hashing with Argon2id (argon2-cffi); verification runs off the event loop."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

if TYPE_CHECKING:
    from collections.abc import Sequence

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


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_password(hashes: str | Sequence[str] | None, password: str) -> bool:
    """Check `password` against a hash, or against any of several while a secret is rotated.

    None (an unknown user) is always False, after the same work as one wrong password.
    """
    candidates = (hashes,) if isinstance(hashes, str) else tuple(hashes or ())
    if not candidates:
        _verify(_DUMMY_HASH, password)
        return False
    return any(_verify(item, password) for item in candidates)


async def verify_password_async(hashes: str | Sequence[str] | None, password: str) -> bool:
    """`verify_password` in a worker thread: Argon2 takes tens of milliseconds of CPU."""
    return await asyncio.to_thread(verify_password, hashes, password)
