"""The email that tells a recipient a secure message waits in the portal: a link and nothing of
the message (no subject, no body, no attachment names), branded from `portal.branding`. Jinja2
with autoescaping renders the HTML part; a plain-text part carries the same words."""

from __future__ import annotations

import datetime
import functools
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import jinja2

from gateway.config import PortalConfig
from gateway.message import QueuedMessage
from gateway.spool.generated import generated


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("gateway.portal", "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def link_for(portal: PortalConfig, token: str) -> str:
    return f"{portal.base_url.rstrip('/')}/m/{token}"


def build(portal: PortalConfig, *, token: str, recipient: str, expires: float, hostname: str,
          sender: str = "", about: str | None = None) -> tuple[QueuedMessage, bytes]:
    """The notification: From the branding's sender (so a reply reaches a person). Its envelope
    sender is the original message's (`sender`, queue id `about`): if it cannot be delivered, the
    one who sent the secure message learns it from a DSN (headers only: nothing secret in it)."""
    branding = portal.branding
    values = {
        "organization": branding.organization, "logo_url": branding.logo_url, "colour": branding.colour,
        "support_contact": branding.support_contact, "link": link_for(portal, token),
        "expires": datetime.datetime.fromtimestamp(expires, datetime.UTC).strftime("%d %B %Y, %H:%M UTC"),
    }
    environment = _environment()
    notice = EmailMessage()
    notice["From"] = branding.sender or f"no-reply@{hostname}"
    notice["To"] = recipient
    notice["Subject"] = f"Secure message from {branding.organization}"
    notice["Date"] = formatdate(localtime=False)
    notice["Message-ID"] = make_msgid(domain=hostname)
    notice["Auto-Submitted"] = "auto-generated"
    notice.set_content(environment.get_template("notification.txt.j2").render(values))
    notice.add_alternative(environment.get_template("notification.html.j2").render(values), subtype="html")
    return generated(notice, recipient=recipient, hostname=hostname, listener="portal-notice",
                     sender=sender, about=about)
