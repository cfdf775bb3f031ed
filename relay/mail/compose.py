"""Mail the relay writes itself (case notices, subscription confirmations): one way to make it.

It is spooled like any other message, as kind `notice`: it goes through the render policies
(the trace gives it a bounce address, DKIM signs it for its From domain) and is never held with
a suspended account's mail.
"""

from __future__ import annotations

import secrets
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid
from typing import TYPE_CHECKING

from relay.clock import to_datetime
from relay.storage.records import NewMessage, new_message_id

if TYPE_CHECKING:
    from collections.abc import Mapping

    from relay.config import Config


def relay_mail(
    config: Config,
    *,
    account_id: str,
    sender: tuple[str, str],
    to: str,
    subject: str,
    text: str,
    html: str | None = None,
    headers: Mapping[str, str] | None = None,
    now: float,
) -> NewMessage:
    """A message from `sender` (display name, address) to `to`, ready to spool."""
    email = EmailMessage(policy=SMTP)
    email["From"] = formataddr(sender)
    email["To"] = to
    email["Subject"] = subject
    email["Date"] = format_datetime(to_datetime(now))
    email["Message-ID"] = make_msgid(idstring=secrets.token_hex(6), domain=config.relay_domain)
    email["Auto-Submitted"] = "auto-generated"
    for name, value in (headers or {}).items():
        email[name] = value
    email.set_content(text)
    if html is not None:
        email.add_alternative(html, subtype="html")
    return NewMessage(
        id=new_message_id(),
        account_id=account_id,
        mail_from=sender[1],
        recipients=(to,),
        content=email.as_bytes(),
        received_at=now,
        kind="notice",
    )
