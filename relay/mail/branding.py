"""What recipients see, white-labelled per account: footers, pages and the confirmation email.

Every value that comes from configuration or a token is HTML-escaped here (the subscription
pages are Jinja2 templates in `relay/web/pages/`, rendered with autoescaping).
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from relay.mail.render import Footer

if TYPE_CHECKING:
    from relay.configaccounts import Brand

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

_FORM_STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "subscribe_title": "Subscribe to {list}",
        "subscribe_intro": "Enter your email address to receive {list} from {name}.",
        "email_label": "Email address",
        "consent_label": "I agree",
        "subscribe_button": "Subscribe",
        "resubmit_note": "Please check your address and the consent text, then subscribe.",
        "invalid_address": "Please enter a valid email address.",
        "consent_required": "Please tick the box to agree.",
        "sent_title": "Check your inbox",
        "sent_text": "If the address can be subscribed, we have sent it a link. Open the email "
        "and confirm to complete your subscription. The link is valid for {days} days.",
        "confirm_title": "Confirm your subscription to {list}",
        "confirm_text": "Subscribe {address} to {list} from {name}?",
        "confirm_button": "Confirm subscription",
        "confirmed_title": "You are subscribed",
        "confirmed_text": "{address} will receive {list} from {name}. Every email has a link "
        "to unsubscribe.",
        "invalid_title": "This confirmation link is not valid",
        "invalid_text": "The link is incomplete or has expired. Please subscribe again.",
        "limited_title": "Too many requests",
        "limited_text": "Please wait a while before trying again.",
        "unavailable_title": "Please try again in a moment",
        "unavailable_text": "Your request could not be recorded right now. Nothing was changed.",
        "mail_subject": "Please confirm your subscription to {list}",
        "mail_text": "Please confirm that you want to receive {list} from {name}:",
        "mail_ignore": "If you did not ask for this, ignore this email: you will not be "
        "subscribed and will not hear from us again.",
    },
    "de": {
        "subscribe_title": "{list} abonnieren",
        "subscribe_intro": "Geben Sie Ihre E-Mail-Adresse ein, um {list} von {name} zu erhalten.",
        "email_label": "E-Mail-Adresse",
        "consent_label": "Ich stimme zu",
        "subscribe_button": "Abonnieren",
        "resubmit_note": "Bitte pr\u00fcfen Sie Ihre Adresse und den Einwilligungstext.",
        "invalid_address": "Bitte geben Sie eine g\u00fcltige E-Mail-Adresse ein.",
        "consent_required": "Bitte best\u00e4tigen Sie Ihre Einwilligung.",
        "sent_title": "Bitte pr\u00fcfen Sie Ihr Postfach",
        "sent_text": "Wenn die Adresse abonniert werden kann, haben wir ihr einen Link "
        "geschickt. Best\u00e4tigen Sie damit Ihr Abonnement. Der Link gilt {days} Tage.",
        "confirm_title": "Abonnement von {list} best\u00e4tigen",
        "confirm_text": "{address} f\u00fcr {list} von {name} eintragen?",
        "confirm_button": "Abonnement best\u00e4tigen",
        "confirmed_title": "Sie sind eingetragen",
        "confirmed_text": "{address} erh\u00e4lt {list} von {name}. Jede E-Mail enth\u00e4lt "
        "einen Abmeldelink.",
        "invalid_title": "Dieser Best\u00e4tigungslink ist ung\u00fcltig",
        "invalid_text": "Der Link ist unvollst\u00e4ndig oder abgelaufen.",
        "limited_title": "Zu viele Anfragen",
        "limited_text": "Bitte warten Sie eine Weile.",
        "mail_subject": "Bitte best\u00e4tigen Sie Ihr Abonnement von {list}",
        "mail_text": "Bitte best\u00e4tigen Sie, dass Sie {list} von {name} erhalten m\u00f6chten:",
        "unavailable_title": "Bitte versuchen Sie es gleich noch einmal",
        "unavailable_text": "Ihre Anfrage konnte gerade nicht gespeichert werden. Es wurde "
        "nichts ge\u00e4ndert.",
        "mail_ignore": "Wenn Sie das nicht angefordert haben, ignorieren Sie diese E-Mail.",
    },
    "fr": {
        "subscribe_title": "S'abonner \u00e0 {list}",
        "subscribe_intro": "Saisissez votre adresse e-mail pour recevoir {list} de {name}.",
        "email_label": "Adresse e-mail",
        "consent_label": "J'accepte",
        "subscribe_button": "S'abonner",
        "resubmit_note": "Veuillez v\u00e9rifier votre adresse et le texte de consentement, puis "
        "vous abonner.",
        "invalid_address": "Veuillez saisir une adresse e-mail valide.",
        "consent_required": "Veuillez cocher la case pour donner votre accord.",
        "sent_title": "Consultez votre bo\u00eete de r\u00e9ception",
        "sent_text": "Si l'adresse peut \u00eatre abonn\u00e9e, nous lui avons envoy\u00e9 un "
        "lien. Ouvrez l'e-mail et confirmez pour terminer votre abonnement. Le lien est valable "
        "{days} jours.",
        "confirm_title": "Confirmez votre abonnement \u00e0 {list}",
        "confirm_text": "Abonner {address} \u00e0 {list} de {name} ?",
        "confirm_button": "Confirmer l'abonnement",
        "confirmed_title": "Vous \u00eates abonn\u00e9",
        "confirmed_text": "{address} recevra {list} de {name}. Chaque e-mail contient un lien de "
        "d\u00e9sabonnement.",
        "invalid_title": "Ce lien de confirmation n'est pas valide",
        "invalid_text": "Le lien est incomplet ou a expir\u00e9. Veuillez vous abonner \u00e0 "
        "nouveau.",
        "limited_title": "Trop de demandes",
        "limited_text": "Veuillez patienter un moment avant de r\u00e9essayer.",
        "unavailable_title": "Veuillez r\u00e9essayer dans un instant",
        "unavailable_text": "Votre demande n'a pas pu \u00eatre enregistr\u00e9e pour le moment. "
        "Rien n'a \u00e9t\u00e9 modifi\u00e9.",
        "mail_subject": "Veuillez confirmer votre abonnement \u00e0 {list}",
        "mail_text": "Veuillez confirmer que vous souhaitez recevoir {list} de {name} :",
        "mail_ignore": "Si vous n'avez rien demand\u00e9, ignorez cet e-mail : vous ne serez pas "
        "abonn\u00e9 et ne recevrez plus rien de notre part.",
    },
    "es": {
        "subscribe_title": "Suscribirse a {list}",
        "subscribe_intro": "Introduce tu direcci\u00f3n de correo para recibir {list} de {name}.",
        "email_label": "Correo electr\u00f3nico",
        "consent_label": "Acepto",
        "subscribe_button": "Suscribirse",
        "resubmit_note": "Revisa tu direcci\u00f3n y el texto de consentimiento y vuelve a "
        "suscribirte.",
        "invalid_address": "Introduce una direcci\u00f3n de correo v\u00e1lida.",
        "consent_required": "Marca la casilla para dar tu consentimiento.",
        "sent_title": "Revisa tu bandeja de entrada",
        "sent_text": "Si la direcci\u00f3n puede suscribirse, le hemos enviado un enlace. Abre el "
        "correo y confirma para completar tu suscripci\u00f3n. El enlace es v\u00e1lido durante "
        "{days} d\u00edas.",
        "confirm_title": "Confirma tu suscripci\u00f3n a {list}",
        "confirm_text": "\u00bfSuscribir {address} a {list} de {name}?",
        "confirm_button": "Confirmar suscripci\u00f3n",
        "confirmed_title": "Te has suscrito",
        "confirmed_text": "{address} recibir\u00e1 {list} de {name}. Cada correo incluye un enlace "
        "para darse de baja.",
        "invalid_title": "Este enlace de confirmaci\u00f3n no es v\u00e1lido",
        "invalid_text": "El enlace est\u00e1 incompleto o ha caducado. Vuelve a suscribirte.",
        "limited_title": "Demasiadas solicitudes",
        "limited_text": "Espera un poco antes de volver a intentarlo.",
        "unavailable_title": "Int\u00e9ntalo de nuevo en un momento",
        "unavailable_text": "No se pudo registrar tu solicitud en este momento. No se ha cambiado "
        "nada.",
        "mail_subject": "Confirma tu suscripci\u00f3n a {list}",
        "mail_text": "Confirma que quieres recibir {list} de {name}:",
        "mail_ignore": "Si no lo has solicitado, ignora este correo: no se te suscribir\u00e1 y no "
        "volver\u00e1s a saber de nosotros.",
    },
}


def strings(language: str) -> dict[str, str]:
    """The texts in `language` (a tag such as `de` or `de-AT`), English when unknown."""
    return _STRINGS.get(language.split("-", maxsplit=1)[0].lower(), _STRINGS["en"])


def form_strings(language: str) -> dict[str, str]:
    """The subscription texts in `language` (a tag such as `fr-CA`), English when unknown."""
    return _FORM_STRINGS.get(language.split("-", maxsplit=1)[0].lower(), _FORM_STRINGS["en"])


def confirmation_email(brand: Brand, list_name: str, link: str) -> tuple[str, str, str]:
    """Subject, text and HTML of the confirmation email (the HTML escaped)."""
    words = form_strings(brand.language)
    subject = words["mail_subject"].format(list=list_name)
    intro = words["mail_text"].format(list=list_name, name=brand.name)
    text = (
        f"{intro}\n\n{link}\n\n{words['mail_ignore']}\n\n-- \n"
        f"{brand.name}, {brand.postal_address}\n"
    )
    html = (
        '<!DOCTYPE html><html><body style="font-family:sans-serif;color:#222">'
        f"<p>{escape(intro)}</p>"
        f'<p><a href="{escape(link)}" style="display:inline-block;padding:10px 18px;'
        f'background:{escape(brand.color)};color:#ffffff;text-decoration:none;border-radius:4px">'
        f"{escape(words['confirm_button'])}</a></p>"
        f"<p>{escape(words['mail_ignore'])}</p>"
        f'<p style="font-size:12px;color:#666666">{escape(brand.name)}, '
        f"{escape(brand.postal_address)}</p></body></html>"
    )
    return subject, text, html


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
