"""What flows through Mailward: the envelope, its recipients and where a message came from.

These are plain frozen dataclasses with a stable dict form (`to_dict` / `from_dict`), which is how
the spool persists them; the dict form never holds message content.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

_XTEXT = re.compile(r"\+([0-9A-F]{2})")


# Control characters (NUL, CR, LF, TAB...) and lone surrogates: aiosmtpd decodes command arguments
# as UTF-8 with surrogateescape, so bytes that are not UTF-8 arrive as U+DC80..U+DCFF.
_NOT_IN_ADDRESS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def address_fit(address: str, smtputf8: bool) -> bool:
    """Whether an envelope address may travel: no control characters, valid UTF-8, and 8-bit
    only in a transaction that declared SMTPUTF8 (RFC 6531). Anything else breaks every later
    hop: ingress refuses it at MAIL or RCPT, delivery fails such a recipient for good."""
    return _NOT_IN_ADDRESS.search(address) is None and (smtputf8 or address.isascii())


def decode_xtext(text: str) -> str:
    """RFC 3461 xtext: "+HH" stands for the byte HH. The envelope keeps ENVID and ORCPT decoded."""
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), text)


def encode_xtext(text: str) -> str:
    """The inverse, for passing ENVID and ORCPT on: "+", "=", controls, space and non-ASCII
    become "+HH" (non-ASCII as its UTF-8 bytes)."""
    return "".join(char if "!" <= char <= "~" and char not in "+=" else
                   "".join(f"+{byte:02X}" for byte in char.encode("utf-8")) for char in text)


class RecipientState(StrEnum):
    """Where one recipient of a queued message stands; only the spool journal changes it."""

    PENDING = "pending"  # not tried yet
    DEFERRED = "deferred"  # tried, temporary failure; will be retried
    DELIVERED = "delivered"  # accepted by the next hop
    BOUNCED = "bounced"  # permanently failed; a DSN goes to the sender
    DROPPED = "dropped"  # removed by policy or admin, no DSN

    @property
    def final(self) -> bool:
        return self in (RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.DROPPED)


@dataclass(frozen=True)
class Recipient:
    address: str
    orcpt: str | None = None  # RFC 3461 original recipient, "type;address", xtext-decoded
    notify: tuple[str, ...] = ()  # RFC 3461 NOTIFY: NEVER, or any of SUCCESS, FAILURE, DELAY


@dataclass(frozen=True)
class Envelope:
    sender: str  # "" is the null sender (bounces)
    recipients: tuple[Recipient, ...]
    body: str = "7BIT"  # 7BIT or 8BITMIME
    smtputf8: bool = False
    ret: str | None = None  # RFC 3461 RET: FULL or HDRS
    envid: str | None = None  # RFC 3461 ENVID, xtext-decoded
    requiretls: bool = False  # RFC 8689 REQUIRETLS

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2].lower()


@dataclass(frozen=True)
class ClientInfo:
    """The submitting client, as the SMTP session saw it (for Received, audit and metrics)."""

    address: str
    helo: str
    listener: str
    auth_user: str | None = None
    relay_reason: str = ""  # network, auth or certificate: why relay was allowed
    tls_version: str | None = None
    tls_cipher: str | None = None
    cert_subject: str | None = None


@dataclass(frozen=True)
class RecipientStatus:
    """The latest journalled result for one recipient."""

    state: RecipientState = RecipientState.PENDING
    at: float = 0.0
    attempts: int = 0
    dsn: str = ""  # enhanced status code, e.g. 5.1.1
    reply: str = ""  # the remote reply or our own diagnostic
    warned: bool = False  # a delay warning has been sent for this recipient
    protection: str = ""  # how it was delivered: tls-verified, tls, smime, pgp, none


@dataclass(frozen=True)
class PolicyDecision:
    """What DLP policy decided before the 250, kept with the message for delivery and audit:
    rule names and recipient indexes only, never what was found."""

    action: str = "allow"  # allow, tag, notify, encrypt or hold (block and tempfail never queue)
    rules: tuple[str, ...] = ()  # the rules applied
    protect: tuple[int, ...] = ()  # recipients that must get protected delivery
    # How to protect them, strongest first: tls (verified), smime, pgp, portal.
    methods: tuple[str, ...] = ("tls", "smime", "pgp", "portal")
    receipt: bool = False  # tell the sender how each recipient was protected, once all are final
    pool: str | None = None  # the egress pool a rule asks for (e.g. a marketing stream)
    # For a held message only: what the scan found, as counts per detector (never the values),
    # so that a reviewer sees why without a search of the audit log.
    detectors: tuple[tuple[str, int], ...] = ()

    def protects(self, index: int) -> bool:
        return index in self.protect


@dataclass(frozen=True)
class QueuedMessage:
    """A message's metadata as stored in the spool (the content is stored and read apart)."""

    queue_id: str
    received_at: float
    envelope: Envelope
    client: ClientInfo
    size: int
    message_id: str | None = None  # the Message-ID header, for search; not PHI
    policy: PolicyDecision = PolicyDecision()
    # The egress pool chosen at ingress (X-Mailward-Pool header or DLP rule); None: by sender domain.
    pool: str | None = None
    # A portal notification: the queue id of the message it announces. Its failure is that
    # recipient's failure (audited for the original; the DSN goes to the original's sender).
    about: str | None = None
    statuses: tuple[RecipientStatus, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """What `dataclasses.asdict` gives, without the statuses (stored in the journal), and
        without its deep copy of every string and number (27 -> 17 us a message)."""
        return {name: _plain(getattr(self, name)) for name in _field_names(QueuedMessage)
                if name != "statuses"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueuedMessage:
        envelope = dict(data["envelope"])
        envelope["recipients"] = tuple(
            Recipient(address=r["address"], orcpt=r.get("orcpt"), notify=tuple(r.get("notify", ())))
            for r in envelope["recipients"])
        return cls(
            queue_id=data["queue_id"],
            received_at=data["received_at"],
            envelope=Envelope(**envelope),
            client=ClientInfo(**data["client"]),
            size=data["size"],
            message_id=data.get("message_id"),
            policy=_policy_from_dict(data.get("policy", {})),
            pool=data.get("pool"),
            about=data.get("about"),
        )

    def with_statuses(self, statuses: tuple[RecipientStatus, ...]) -> QueuedMessage:
        return dataclasses.replace(self, statuses=statuses)

    def pending_recipients(self) -> list[int]:
        """Indexes of recipients that still need delivery."""
        return [i for i, status in enumerate(self.statuses) if not status.state.final]


def _plain(value: Any) -> Any:
    """`value` as `dataclasses.asdict` converts it: dataclasses to dicts, inside tuples, lists and
    dicts too; anything else as it is (the fields hold immutable values)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, dict):
        return {_plain(key): _plain(item) for key, item in value.items()}
    return value


@functools.cache
def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(kind))


def _policy_from_dict(data: dict[str, Any]) -> PolicyDecision:
    decision = PolicyDecision(action=data.get("action", "allow"), rules=tuple(data.get("rules", ())),
                              protect=tuple(data.get("protect", ())))
    if "methods" in data:
        decision = dataclasses.replace(decision, methods=tuple(data["methods"]))
    detectors = tuple((str(name), int(count)) for name, count in data.get("detectors", ()))
    return dataclasses.replace(decision, receipt=bool(data.get("receipt", False)), pool=data.get("pool"),
                               detectors=detectors)


# -- delivery results: what happened to a recipient, as the queue, audit and DSNs record it --

_ENHANCED_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)")


@dataclass(frozen=True)
class Reply:
    """An SMTP reply (or our own diagnostic in the same shape) for one recipient."""

    code: int
    status: str  # enhanced status code, e.g. 5.1.1
    text: str  # the reply text, without the code

    @classmethod
    def from_smtp(cls, code: int, text: str, default_detail: str = "0.0") -> Reply:
        text = " ".join(text.split())[:500]  # one line, bounded: remote text is untrusted
        match = _ENHANCED_STATUS.match(text)
        if match and match.group(1) == str(code)[0]:
            return cls(code, ".".join(match.groups()), text[match.end():].strip())
        return cls(code, f"{str(code)[0]}.{default_detail}", text)

    @property
    def state(self) -> RecipientState:
        if 200 <= self.code < 300:
            return RecipientState.DELIVERED
        return RecipientState.BOUNCED if self.code >= 500 else RecipientState.DEFERRED

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}".rstrip()


@dataclass(frozen=True)
class TlsSession:
    version: str | None = None  # None: the connection is not encrypted
    cipher: str | None = None
    verified: bool = False
    dane: bool = False  # verified by the host's TLSA records (RFC 7672)

    def __str__(self) -> str:
        if self.version is None:
            return "none"
        how = "dane" if self.dane else "verified" if self.verified else "unverified"
        return f"{self.version}/{self.cipher}/{how}"


@dataclass(frozen=True)
class Attempt:
    """What happened to one recipient in one delivery attempt."""

    index: int
    reply: Reply
    relay: str = "none"  # host[ip]:port, or "none" when no connection was made
    remote_host: str | None = None
    tls: TlsSession = TlsSession()
    passes_dsn: bool = False  # the next hop took our DSN parameters
    protection: str = ""  # tls-verified, tls, smime, pgp, portal, none; "" = from the TLS session
    tls_failure: bool = False  # the connection could not meet the TLS requirement
    hold: bool = False  # the message goes to hold/ for an admin (the portal is not there yet)
    remote_ip: str | None = None
    egress_ip: str | None = None  # our source address on the connection
    dkim: str = ""  # "domain:selector,selector" of the signatures on what was sent
    note: str = ""  # for protected recipients: why stronger methods were not used
    pool: str = "default"  # the egress pool it left from
    retry_after: float = 0.0  # held back by shaping or warm-up: try again after this many seconds
    drop: bool = False  # suppressed, and the sender is not told: no DSN

    @property
    def protection_used(self) -> str:
        if self.protection:
            return self.protection
        return "none" if self.tls.version is None else ("tls-verified" if self.tls.verified else "tls")
