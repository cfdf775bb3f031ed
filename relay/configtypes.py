"""Configuration value types: durations, sizes, domains, paths, addresses, URLs, hashes.

Each parses what a YAML file may say (`15m`, `25MB`, an IDN domain, a relative path) into one
canonical value, or raises ValueError with the reason; `relay.config` builds its sections on them.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationInfo

from relay.passwords import is_password_hash

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)(?:i?B)?\s*$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$", re.ASCII
)


def parse_duration(value: object) -> float:
    """Accept seconds as a number or a string such as `90`, `15m`, `3d`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, 15m, 3d")  # noqa: TRY004
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError("expected a duration such as 30, 15m, 3d")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Accept bytes as a number or a string such as `25MB`, `512k`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)):
        return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    raise ValueError("expected a size in bytes such as 26214400 or 25MB")


def normalize_domain(value: str) -> str:
    """Normalise a domain to lower-case ASCII (IDNA) and check its syntax."""
    try:
        ascii_domain = value.strip().rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValueError(f"not a valid domain: {value!r}") from exc
    if not _DOMAIN.match(ascii_domain) or "." not in ascii_domain:
        raise ValueError(f"not a valid domain: {value!r}")
    return ascii_domain


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    """A relative path, resolved against the config file's folder (the validation context)."""
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        return (Path(base) / value).resolve()
    return value


def one_or_more(value: object) -> object:
    """A single value where a list is expected stands for a list of one."""
    return [value] if isinstance(value, str) else value


def check_hashes(value: tuple[str, ...]) -> tuple[str, ...]:
    """Secret hashes made by `optin-relay hash-password`: at least one, each one well-formed."""
    if not value:
        raise ValueError("expected a hash made by `optin-relay hash-password`, or a list of them")
    for item in value:
        if not is_password_hash(item):
            raise ValueError("expected a hash made by `optin-relay hash-password`")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Domain = Annotated[str, AfterValidator(normalize_domain)]
ConfigPath = Annotated[Path, AfterValidator(resolve_path)]
# A credential's hash, or a list of them while it is being rotated (any one of them is accepted).
Hashes = Annotated[tuple[str, ...], BeforeValidator(one_or_more), AfterValidator(check_hashes)]


def split_host_port(address: str) -> tuple[str, int]:
    """Split `host:port` or `[v6]:port` into its parts."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:  # noqa: PLR2004
        raise ValueError(f"expected host:port, got {address!r}")
    host = host.strip("[]")
    if not host:
        raise ValueError(f"expected host:port, got {address!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Say whether `host` is a loopback address (or `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Model(BaseModel):
    """Every configuration section: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


def web_url(value: str) -> str:
    """An absolute https URL (http only on loopback hosts, for development)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an absolute https:// URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError("expected https:// (http only on loopback)")
    return value
