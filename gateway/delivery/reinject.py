"""``mailward queue reinject --to HOST:PORT``: hand this node's queued mail to another node, to
retire this one (docs/cluster.md).

Each message is first moved to hold/ (so a running delivery leaves it alone), then sent over SMTP
(STARTTLS when offered) to the other node for its recipients that are still pending, with its
envelope parameters (DSN, SMTPUTF8, 8BITMIME, REQUIRETLS). Only when the other node has accepted
every one of them (its 250: the message is on its disk) is the message deleted here, with an
audit record naming where it went; otherwise it stays in hold/ and the reply is shown. A message
being delivered at that moment (active/) is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.audit.events import Audit, os_user
from gateway.config import Config
from gateway.delivery.client import ConnectionFailed, Connector, Timeouts
from gateway.errors import MailwardError
from gateway.resolver import Destination
from gateway.spool import QueueState, Spool
from gateway.transport.tlspolicy import TlsRequirement

MOVABLE = (QueueState.INCOMING, QueueState.DEFERRED, QueueState.HOLD)


@dataclass(frozen=True)
class Handed:
    queue_id: str
    ok: bool
    result: str


async def reinject(config: Config, spool: Spool, audit: Audit, queue_ids: list[str], host: str,
                   port: int) -> list[Handed]:
    delivery = config.delivery
    connector = Connector(config.hostname, Timeouts(delivery.connect_timeout, delivery.command_timeout,
                                                    delivery.data_timeout),
                          ca_file=str(delivery.ca_file) if delivery.ca_file else None)
    target = Destination(host, (host,), port)
    done = []
    for queue_id in queue_ids:
        try:
            done.append(await _hand_over(connector, target, spool, audit, queue_id))
        except (MailwardError, ConnectionFailed) as exc:
            reason = exc.reply.text if isinstance(exc, ConnectionFailed) else str(exc)
            done.append(Handed(queue_id, False, reason))
    return done


async def _hand_over(connector: Connector, target: Destination, spool: Spool, audit: Audit,
                     queue_id: str) -> Handed:
    spool.move(queue_id, QueueState.HOLD, only_from=MOVABLE)
    message, content = spool.read(queue_id, QueueState.HOLD)
    pending = [(i, message.envelope.recipients[i]) for i in message.pending_recipients()]
    if not pending:
        return Handed(queue_id, False, "no recipient is pending; left in hold")
    connection = await connector.open([target], TlsRequirement(level="may"))
    try:
        replies = await connection.deliver(message.envelope, pending, content)
    finally:
        await connection.close()
    refused = {i: reply for i, reply in replies.items() if reply.code >= 300}
    if refused:
        first = next(iter(refused.values()))
        return Handed(queue_id, False, f"{len(refused)} recipient(s) refused ({first.code} {first.text}); "
                                       "left in hold")
    new_id = next(iter(replies.values())).text.split()[-1] if replies else ""
    await audit.write({"event": "reinjected", "queue_id": queue_id, "to": f"{target.host}:{target.port}",
                       "recipients": len(pending), "new_queue_id": new_id, "user": os_user(), "by": "admin"})
    spool.remove(queue_id)
    return Handed(queue_id, True, f"handed to {target.host}:{target.port} as {new_id}")
