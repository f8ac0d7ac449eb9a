"""What a 4xx/5xx reply means, from its enhanced status code (RFC 3463) and the texts the large
receivers use: bad mailbox, mailbox full, policy (spam, reputation, block), throttled, DNS, TLS,
or other.

Only `bad_mailbox` on a permanent failure suppresses the address. A policy or reputation block
("5.7.1 ... low reputation", common while an IP warms up) says something about us, not about
the recipient: a patient is not a bad address, so it never suppresses.
"""

from __future__ import annotations

import re
from typing import Literal

BounceClass = Literal["bad_mailbox", "mailbox_full", "policy", "throttled", "dns", "tls", "other"]
CLASSES: tuple[BounceClass, ...] = ("bad_mailbox", "mailbox_full", "policy", "throttled", "dns", "tls",
                                    "other")

_THROTTLED = re.compile(r"rate limit|too many|throttl|temporarily deferred|server busy|unusual rate|"
                        r"exceeded.*(limit|quota) for|slow down|unexpected volume", re.I)
_POLICY = re.compile(r"spam|block|reputation|policy|blacklist|blocklist|spamhaus|dnsbl|rbl|"
                     r"not allowed|denied|rejected for|dmarc|spf|dkim|unauthenticated", re.I)
_BAD_MAILBOX = re.compile(r"no such (user|mailbox|recipient)|user unknown|unknown user|"
                          r"does not exist|recipient not found|address rejected|invalid (recipient|"
                          r"mailbox)|mailbox unavailable|account (has been )?disabled|not a valid", re.I)
_FULL = re.compile(r"mailbox (is )?full|over ?quota|quota exceeded|insufficient storage", re.I)
_DNS = re.compile(r"nxdomain|domain (not found|does not exist)|host not found|no mx|null mx|"
                  r"dns", re.I)


def classify(code: int, status: str, text: str, *, tls_failure: bool = False) -> BounceClass:
    """The class of a failure reply (`code` 4xx/5xx, `status` like "5.1.1", the reply text)."""
    if tls_failure or status in ("4.7.5", "5.7.10", "5.7.30") or status.startswith(("4.7.4", "5.7.4")):
        return "tls"
    subject_detail = ".".join(status.split(".")[1:3]) if status.count(".") == 2 else ""
    if subject_detail in ("1.1", "1.6", "1.10", "2.1") or \
            (subject_detail == "1.0" and _BAD_MAILBOX.search(text)):
        return "bad_mailbox"
    if subject_detail in ("2.2", "2.3") or _FULL.search(text):
        return "mailbox_full"
    if code in (421, 450, 451, 452) and (_THROTTLED.search(text) or status in ("4.7.0", "4.7.28")
                                         or status.startswith("4.7.5")):
        return "throttled"
    if subject_detail in ("4.3", "4.4", "1.2") or _DNS.search(text):
        return "dns"
    if subject_detail.startswith("7.") or _POLICY.search(text):
        return "policy"
    if code >= 500 and _BAD_MAILBOX.search(text):
        return "bad_mailbox"
    return "other"


_REPUTATION = re.compile(r"reputation|blocked using|block ?list|black ?list|spamhaus|\brbl\b|dnsbl|"
                         r"listed at|ip .*(blocked|banned)", re.I)


def reputation_block(code: int, status: str, text: str) -> bool:
    """A refusal because of our sending IP's standing, not the recipient or the content: it is
    retried later (from another IP where the pool has one) instead of bouncing."""
    return code >= 500 and status.startswith("5.7") and bool(_REPUTATION.search(text))


def suppresses(code: int, bounce_class: BounceClass) -> bool:
    """Whether a final failure of this class puts the recipient on the suppression list."""
    return code >= 500 and bounce_class == "bad_mailbox"
