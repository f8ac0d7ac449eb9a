"""The compliance notification a `notify` rule sends: who sent what kind of message to whom and
what policy did, with no PHI (no subject, body, attachment names or matched values), so the
notice itself can travel by ordinary mail."""

from __future__ import annotations

from gateway.message import QueuedMessage
from gateway.spool.generated import generated, notice
from gateway.stages.dlp.scanner import ScanSummary
from gateway.stages.dlp.verdict import Verdict

_LISTENER = "dlp-notify"


def notification(message: QueuedMessage, verdict: Verdict, summary: ScanSummary | None, *,
                 to: str, sender: str, hostname: str) -> tuple[QueuedMessage, bytes]:
    """A queued message (null envelope sender, so it can never bounce back into a loop)."""
    envelope = message.envelope
    found = summary.counts if summary is not None else {}
    counts = ", ".join(f"{name}={count}" for name, count in sorted(found.items()))
    lines = [
        f"Mailward data loss prevention on {hostname} applied policy to a message.",
        "",
        f"Action:      {verdict.action}",
        f"Rules:       {', '.join(verdict.applied) or '-'}",
        f"Detectors:   {counts or 'none'}",
        f"Facts:       {', '.join(sorted(summary.facts)) if summary and summary.facts else 'none'}",
        f"Scan error:  {verdict.error or 'none'}",
        f"Queue id:    {message.queue_id}",
        f"Message-ID:  {message.message_id or '-'}",
        f"Sender:      <{envelope.sender}>",
        f"Recipients:  {', '.join(r.address for r in envelope.recipients)}",
        f"Client:      {message.client.address} ({message.client.listener}, "
        f"user {message.client.auth_user or '-'})",
        f"Size:        {message.size} bytes",
        "",
    ]
    if verdict.action == "hold":
        lines += ["The message is held. Review it with:",
                  f"  mailward queue show {message.queue_id} --message",
                  f"  mailward queue release {message.queue_id}   (deliver it)",
                  f"  mailward queue delete {message.queue_id}    (discard it)", ""]
    mail = notice(sender=sender, to=to, hostname=hostname,
                  subject=f"[Mailward DLP] {verdict.action}: message {message.queue_id}")
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content("\n".join(lines))
    return generated(mail, recipient=to, hostname=hostname, listener="dlp-notify")
