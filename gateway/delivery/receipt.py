"""The protection receipt: when a rule asks for it (`receipt: true`), the sender learns, once
every recipient is final, how each one was protected (verified TLS, S/MIME, PGP) or why it was
not delivered. It names recipients and methods only: no subject, no content."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.message import QueuedMessage, RecipientState, RecipientStatus
from gateway.spool.generated import generated, notice

_WORDS = {"tls-verified": "delivered over verified TLS", "tls": "delivered over TLS (not verified)",
          "smime": "delivered encrypted with S/MIME", "pgp": "delivered encrypted with PGP/MIME",
          "none": "delivered without encryption", "": "delivered"}


def build(message: QueuedMessage, statuses: Sequence[RecipientStatus],
          hostname: str) -> tuple[QueuedMessage, bytes]:
    lines = [f"Your message {message.message_id or ''} (queue id {message.queue_id}) was handled by "
             f"the secure mail gateway {hostname}:", ""]
    for recipient, status in zip(message.envelope.recipients, statuses, strict=True):
        if status.state is RecipientState.DELIVERED:
            outcome = _WORDS.get(status.protection, f"delivered ({status.protection})")
        elif status.state is RecipientState.BOUNCED:
            outcome = f"NOT delivered: {status.dsn} {status.reply}"
        else:
            outcome = f"{status.state.value}"
        lines.append(f"  {recipient.address}: {outcome}")
    lines += ["", "This receipt lists recipients and how their copy was protected; it holds nothing "
              "of the message itself."]
    receipt = notice(sender=f"postmaster@{hostname}", to=message.envelope.sender,
                     subject="Delivery and protection receipt", hostname=hostname)
    receipt["Auto-Submitted"] = "auto-replied"
    receipt.set_content("\n".join(lines))
    return generated(receipt, recipient=message.envelope.sender, hostname=hostname, listener="receipt")
