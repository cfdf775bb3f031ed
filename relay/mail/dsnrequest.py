"""What a sender asks of delivery status notifications: the DSN extension's parameters (RFC 3461).

The relay offers DSN. `NOTIFY` and `ORCPT` on RCPT, `RET` and `ENVID` on MAIL are checked at
the door (`take`, with Postfix's 501 replies), kept with the message in their wire form (xtext,
as the client sent them) and read back (`read`) where the relay reports to the sender:

- `NOTIFY=NEVER`, or a list without `FAILURE`: no failure DSN for that recipient (a refusal at
  DATA, a permanent failure, expiry, a deletion from the queue); the events still say it all.
- `NOTIFY=SUCCESS`: a `relayed` DSN once the upstream has accepted the copy. The relay gives
  each copy its own envelope sender (bounce+TOKEN@, to learn of bounces), so it passes no DSN
  parameters upstream and is the last hop that can report to the sender (RFC 3461 section
  4.1's `relayed`: the copy went on into an environment that reports no success).
- `NOTIFY=DELAY`: a hint the relay does not act on (it sends no delay notices).
- `ORCPT` becomes the report's `Original-Recipient`, `ENVID` its `Original-Envelope-Id`, and
  `RET=FULL` returns the whole message (when it is small and 7-bit) instead of its header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ORCPT = 500  # characters of the ORCPT value (RFC 3461 section 4.2)
MAX_ENVID = 100  # characters of the ENVID value (RFC 3461 section 4.4)
RCPT_PARAMS = ("NOTIFY", "ORCPT")
MAIL_PARAMS = ("RET", "ENVID")
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})
# xtext (RFC 3461 section 4): printable ASCII but "+" and "=", and "+" with two hex digits.
# RFC 6533's utf-8 address type also takes UTF-8 characters (and its own \x{HEX} escapes).
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*")
_UTF8_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2}|[^\x00-\x7f])*")
_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


class DsnParamError(ValueError):
    """A DSN parameter the relay cannot take; `reply` is the SMTP answer."""

    def __init__(self, reply: str) -> None:
        """Refuse the command with `reply`."""
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class DsnRequest:
    """The DSN parameters of one recipient and its message, decoded."""

    notify: frozenset[str] | None = None  # None: not given (failures are reported)
    orcpt: str | None = None  # `type;address`, xtext decoded
    ret: str | None = None  # FULL or HDRS
    envid: str | None = None  # xtext decoded

    @property
    def on_failure(self) -> bool:
        """Whether a failure of this recipient is reported to the sender."""
        return self.notify is None or "FAILURE" in self.notify

    @property
    def on_success(self) -> bool:
        """Whether the sender asked to hear of this recipient's delivery."""
        return self.notify is not None and "SUCCESS" in self.notify


def _decode(xtext: str) -> str:
    return _HEX.sub(lambda match: chr(int(match.group(1), 16)), xtext)


def _escapes_printable(xtext: str) -> bool:
    """Whether every `+XX` of `xtext` stands for printable ASCII (Postfix's check too)."""
    return all(0x20 <= int(code, 16) <= 0x7E for code in _HEX.findall(xtext))  # noqa: PLR2004


def _checked(name: str, value: str) -> str:
    """`value` of parameter `name` in its stored form, or DsnParamError."""
    bad = f"501 5.5.4 Bad {name} parameter syntax"
    if name == "NOTIFY":
        keywords = value.upper().split(",")
        if keywords == ["NEVER"]:
            return "NEVER"
        if not keywords or not set(keywords) <= _NOTIFY or len(set(keywords)) != len(keywords):
            raise DsnParamError(bad)
        return ",".join(keywords)
    if name == "RET":
        if value.upper() not in ("FULL", "HDRS"):
            raise DsnParamError(bad)
        return value.upper()
    if name == "ENVID":
        if len(value) > MAX_ENVID or not _XTEXT.fullmatch(value):
            raise DsnParamError(bad)
        if not _escapes_printable(value):
            raise DsnParamError(bad)
        return value
    # ORCPT: addr-type ";" xtext
    kind, semicolon, address = value.partition(";")
    pattern = _UTF8_XTEXT if kind.lower() == "utf-8" else _XTEXT
    if (
        not semicolon
        or not address
        or len(value) > MAX_ORCPT
        or not _ADDR_TYPE.fullmatch(kind)
        or not pattern.fullmatch(address)
        or not _escapes_printable(address)
    ):
        raise DsnParamError(bad)
    return value


def take(params: list[str], names: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """The DSN parameters `names` among a command's `params`, and the others (as given).

    The first is their stored form (`NOTIFY=... ORCPT=...`, None when there are none); a
    parameter given twice, or whose value is not what RFC 3461 allows, raises DsnParamError.
    """
    found: dict[str, str] = {}
    others: list[str] = []
    for param in params:
        keyword, eq, value = param.partition("=")
        name = keyword.upper()
        if name not in names:
            others.append(param)
            continue
        if name in found:
            raise DsnParamError(f"501 5.5.4 Error: multiple {name} parameters")
        if not eq or not value:
            raise DsnParamError(f"501 5.5.4 Bad {name} parameter syntax")
        found[name] = _checked(name, value)
    if not found:
        return None, others
    return " ".join(f"{name}={found[name]}" for name in names if name in found), others


def _fields(stored: str | None) -> dict[str, str]:
    if not stored:
        return {}
    return dict(param.partition("=")[::2] for param in stored.split(" "))


def read(recipient: str | None, envelope: str | None) -> DsnRequest:
    """The request of a recipient's stored parameters and its message's."""
    rcpt = _fields(recipient)
    mail = _fields(envelope)
    notify = rcpt.get("NOTIFY")
    orcpt = rcpt.get("ORCPT")
    if orcpt is not None:
        kind, _, address = orcpt.partition(";")
        orcpt = f"{kind};{_decode(address)}"
    envid = mail.get("ENVID")
    return DsnRequest(
        notify=None if notify is None else frozenset(notify.split(",")) - {"NEVER"},
        orcpt=orcpt,
        ret=mail.get("RET"),
        envid=None if envid is None else _decode(envid),
    )


NO_REQUEST = DsnRequest()  # a sender that asked nothing: failures reported, header returned
