"""What recipients see, white-labelled per account: the footer and the unsubscribe pages.

Every value that comes from configuration or a token is HTML-escaped here.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from relay.render import Footer

if TYPE_CHECKING:
    from relay.config import Brand

_STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "unsubscribe": "Unsubscribe",
        "footer": "To stop receiving these emails, unsubscribe",
        "confirm_title": "Unsubscribe from {name}?",
        "confirm_text": "{address} will no longer receive email from {name}.",
        "done_title": "You are unsubscribed",
        "done_text": "{address} will no longer receive email from {name}.",
        "invalid_title": "This unsubscribe link is not valid",
        "invalid_text": "The link is incomplete or has expired. Please use the link in a recent "
        "email, or reply to it asking to be removed.",
        "unavailable_title": "Please try again in a moment",
        "unavailable_text": "Your request could not be recorded right now. Nothing was changed.",
    },
    "de": {
        "unsubscribe": "Abmelden",
        "footer": "Wenn Sie diese E-Mails nicht mehr erhalten m\u00f6chten, melden Sie sich ab",
        "confirm_title": "Von {name} abmelden?",
        "confirm_text": "{address} erh\u00e4lt dann keine E-Mails mehr von {name}.",
        "done_title": "Sie sind abgemeldet",
        "done_text": "{address} erh\u00e4lt keine E-Mails mehr von {name}.",
        "invalid_title": "Dieser Abmeldelink ist ung\u00fcltig",
        "invalid_text": "Der Link ist unvollst\u00e4ndig oder abgelaufen. Bitte verwenden Sie den "
        "Link aus einer aktuellen E-Mail.",
        "unavailable_title": "Bitte versuchen Sie es gleich noch einmal",
        "unavailable_text": "Ihre Anfrage konnte gerade nicht gespeichert werden.",
    },
    "fr": {
        "unsubscribe": "Se d\u00e9sabonner",
        "footer": "Pour ne plus recevoir ces e-mails, d\u00e9sabonnez-vous",
        "confirm_title": "Se d\u00e9sabonner de {name} ?",
        "confirm_text": "{address} ne recevra plus d'e-mails de {name}.",
        "done_title": "Vous \u00eates d\u00e9sabonn\u00e9",
        "done_text": "{address} ne recevra plus d'e-mails de {name}.",
        "invalid_title": "Ce lien de d\u00e9sabonnement n'est pas valide",
        "invalid_text": "Le lien est incomplet ou a expir\u00e9.",
        "unavailable_title": "Veuillez r\u00e9essayer dans un instant",
        "unavailable_text": "Votre demande n'a pas pu \u00eatre enregistr\u00e9e.",
    },
    "es": {
        "unsubscribe": "Darse de baja",
        "footer": "Para dejar de recibir estos correos, date de baja",
        "confirm_title": "\u00bfDarse de baja de {name}?",
        "confirm_text": "{address} dejar\u00e1 de recibir correos de {name}.",
        "done_title": "Te has dado de baja",
        "done_text": "{address} ya no recibir\u00e1 correos de {name}.",
        "invalid_title": "Este enlace de baja no es v\u00e1lido",
        "invalid_text": "El enlace est\u00e1 incompleto o ha caducado.",
        "unavailable_title": "Int\u00e9ntalo de nuevo en un momento",
        "unavailable_text": "No se pudo registrar tu solicitud.",
    },
}
LANGUAGES = tuple(_STRINGS)


def strings(language: str) -> dict[str, str]:
    """The texts in `language` (a tag such as `de` or `de-AT`), English when unknown."""
    return _STRINGS.get(language.split("-", maxsplit=1)[0].lower(), _STRINGS["en"])


def footer(brand: Brand, url: str) -> Footer:
    """The account's footer for one recipient's unsubscribe `url`."""
    words = strings(brand.language)
    lines = [brand.footer_text] if brand.footer_text else []
    lines += [f"{words['footer']}: {url}", f"{brand.name}, {brand.postal_address}"]
    html_lines = [escape(brand.footer_text)] if brand.footer_text else []
    html_lines += [
        f'<a href="{escape(url)}">{escape(words["unsubscribe"])}</a>',
        f"{escape(brand.name)}, {escape(brand.postal_address)}",
    ]
    html = (
        '<div style="margin-top:24px;font-size:12px;color:#666666;">'
        + "<br>".join(html_lines)
        + "</div>"
    )
    return Footer(text="-- \n" + "\n".join(lines), html=html)


def page(brand_name: str, language: str, kind: str, *, address: str = "", action: str = "") -> str:
    """A complete, self-contained HTML page.

    `kind` is `confirm` (with the button), `done`, `invalid` or `unavailable`.
    """
    words = strings(language)
    values = {"name": escape(brand_name), "address": escape(address)}
    title = escape(words[f"{kind}_title"].format(name=brand_name, address=address))
    text = (
        words[f"{kind}_text"].format(**values)
        if kind in ("confirm", "done")
        else escape(words[f"{kind}_text"])
    )
    form = ""
    if kind == "confirm":
        form = (
            f'<form method="post" action="{escape(action)}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<input type="hidden" name="source" value="page">'
            f'<button type="submit">{escape(words["unsubscribe"])}</button></form>'
        )
    return (
        f'<!DOCTYPE html><html lang="{escape(language)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{title}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:3em auto;"
        "padding:0 1em;color:#222}button{font-size:1em;padding:.6em 1.4em}</style></head>"
        f"<body><h1>{title}</h1><p>{text}</p>{form}"
        f"<p><small>{escape(brand_name)}</small></p></body></html>"
    )
