"""Account password hashing with Argon2id (argon2-cffi); verification runs off the event loop.

argon2 is loaded on first use, so reading a configuration (which only checks that hashes look
like hashes) costs a command-line call nothing.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from argon2 import PasswordHasher


@functools.cache
def _hasher() -> PasswordHasher:
    from argon2 import PasswordHasher  # noqa: PLC0415 - loaded on first use (see above)

    return PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random string, verified against when the username is unknown.

    A wrong username then costs as much time as a wrong password (no username oracle by timing).
    """
    return _hasher().hash("optin-relay-no-such-account")


def prepare() -> None:
    """Load argon2 and make the unknown-user hash now, so no first login pays for it.

    The server calls this at start: otherwise the first wrong username would take longer than
    a wrong password, once.
    """
    _dummy_hash()


def hash_password(password: str) -> str:
    """Return an Argon2id hash of `password` in PHC string form."""
    if not password:
        raise ValueError("the password is empty")
    return _hasher().hash(password)


def is_password_hash(value: str) -> bool:
    """Say whether `value` looks like a hash made by `hash_password`."""
    return value.startswith("$argon2")


def _verify(password_hash: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError  # noqa: PLC0415

    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_password(hashes: str | Sequence[str] | None, password: str) -> bool:
    """Check `password` against a hash, or against any of several while a secret is rotated.

    None (an unknown user) is always False, after the same work as one wrong password.
    """
    candidates = (hashes,) if isinstance(hashes, str) else tuple(hashes or ())
    if not candidates:
        _verify(_dummy_hash(), password)
        return False
    return any(_verify(item, password) for item in candidates)


async def verify_password_async(hashes: str | Sequence[str] | None, password: str) -> bool:
    """`verify_password` in a worker thread: Argon2 takes tens of milliseconds of CPU."""
    return await asyncio.to_thread(verify_password, hashes, password)
