"""Protected delivery: for each recipient that policy says must be protected, the methods of the
policy's order, strongest first, until one works. Never plaintext.

- ``tls``: a connection with a verified certificate (the TLS requirement raised to "verify").
  Only a TLS failure (no STARTTLS, a certificate that does not verify, a failed handshake) moves
  the recipient on to the next method; a host that is down or a 4xx is retried later as usual.
- ``smime`` / ``pgp``: when a usable key is on file, the message is encrypted for that recipient
  alone (its own copy, its own transaction) and sent with opportunistic TLS, since the content
  no longer needs the transport's protection.
- ``portal``: with `portal.enabled`, the message is stored in the secure portal and the recipient
  gets a notification with the link (the recipient counts as delivered, protection "portal");
  without it, the message is held for an admin with a clear log line (`mailward queue release`
  retries it, e.g. after a key was added).

A recipient for whom no method works is deferred with 4.7.5 and retried; past
``max_queue_age`` it bounces. The reason every method failed goes into the recipient's reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import functools
from collections.abc import Awaitable, Callable, Sequence

from gateway.crypto import pgp, smime
from gateway.crypto.keyrings import Keyrings
from gateway.errors import StateUnavailable
from gateway.message import Attempt, QueuedMessage, Reply
from gateway.portal.handoff import PortalHandoff
from gateway.transport.tlspolicy import TlsRequirement

# Sends `content` to the recipients at these indexes with this TLS requirement.
Send = Callable[[list[int], bytes, TlsRequirement, str], Awaitable[list[Attempt]]]

PORTAL_PENDING = Reply(450, "4.7.0", "held: the recipient needs the secure portal, which is not "
                                     "available yet")
PORTAL_STORE_UNAVAILABLE = Reply(450, "4.3.0", "held: the secure portal's store (the cluster database) "
                                               "does not answer; release when it is back")


async def deliver_protected(message: QueuedMessage, content: bytes, indexes: Sequence[int],
                            requirement: TlsRequirement, keyrings: Keyrings, send: Send, *,
                            learned_failure: str | None = None,
                            portal: PortalHandoff | None = None) -> list[Attempt]:
    """Attempts for `indexes`, each made with the first method of the policy's order that works.
    `learned_failure`: verified TLS to this domain failed moments ago (why); skip trying it."""
    remaining = list(indexes)
    attempts: list[Attempt] = []
    tried: dict[int, list[str]] = {i: [] for i in indexes}
    for method in message.policy.methods:
        if not remaining:
            break
        if method == "tls" and learned_failure is not None:
            for index in remaining:
                tried[index].append(f"tls: {learned_failure}")
        elif method == "tls":
            verified = dataclasses.replace(requirement, level="verify")
            remaining = _keep_tls_failures(await send(remaining, content, verified, "tls-verified"),
                                           attempts, tried)
        elif method in ("smime", "pgp"):
            remaining = await _encrypted(method, message, content, remaining, keyrings, send, attempts,
                                         tried)
        elif method == "portal" and portal is not None:
            for index in remaining:
                address = message.envelope.recipients[index].address
                try:
                    portal_id = await portal.deliver(message, content, address)
                except StateUnavailable:
                    # The cluster's portal store is away: the recipient waits in hold/, never
                    # falls through to a weaker method.
                    attempts.append(Attempt(index, PORTAL_STORE_UNAVAILABLE, protection="portal", hold=True))
                    continue
                stored = Reply(250, "2.0.0", f"stored in the secure portal as {portal_id}")
                attempts.append(Attempt(index, stored, protection="portal"))
            remaining = []
        elif method == "portal":
            attempts += [Attempt(i, PORTAL_PENDING, protection="portal", hold=True) for i in remaining]
            remaining = []
    for index in remaining:
        reasons = "; ".join(tried[index]) or "no method in the policy's order"
        attempts.append(Attempt(index, Reply(450, "4.7.5", f"no protection available: {reasons}"),
                                protection="none"))
    # Why the stronger methods were passed over, for the audit record of each recipient.
    return [dataclasses.replace(a, note="; ".join(tried[a.index])) if tried.get(a.index) else a
            for a in attempts]


def _keep_tls_failures(results: list[Attempt], attempts: list[Attempt],
                       tried: dict[int, list[str]]) -> list[int]:
    """Record the final results; return the recipients whose only problem was TLS."""
    failed = []
    for attempt in results:
        if attempt.tls_failure:
            tried[attempt.index].append(f"tls: {attempt.reply.text}")
            failed.append(attempt.index)
        else:
            attempts.append(attempt)
    return failed


async def _encrypted(method: str, message: QueuedMessage, content: bytes, remaining: list[int],
                     keyrings: Keyrings, send: Send, attempts: list[Attempt],
                     tried: dict[int, list[str]]) -> list[int]:
    loop = asyncio.get_running_loop()
    without_key = []
    for index in remaining:
        address = message.envelope.recipients[index].address
        encrypt: Callable[[], bytes]
        if method == "smime":
            found_smime = await keyrings.find_smime(address)
            if found_smime is None:
                tried[index].append("smime: no certificate")
                without_key.append(index)
                continue
            gcm = any(fnmatch.fnmatchcase(address.lower(), p.lower()) for p in keyrings.smime_gcm)
            encrypt = functools.partial(smime.encrypt_gcm if gcm else smime.encrypt, content,
                                        found_smime.certificate, keyrings.neutral_subject)
        else:
            found_pgp = await keyrings.find_pgp(address)
            if found_pgp is None:
                tried[index].append("pgp: no key")
                without_key.append(index)
                continue
            encrypt = functools.partial(pgp.encrypt, content, found_pgp.certificate,
                                        keyrings.neutral_subject)
        try:
            encrypted = await loop.run_in_executor(None, encrypt)  # CPU: off the event loop
        except (pgp.PgpError, ValueError) as exc:
            tried[index].append(f"{method}: {exc}")
            without_key.append(index)
            continue
        attempts += await send([index], encrypted, TlsRequirement("may"), method)
    return without_key
