"""A poison recipient (one that makes delivery raise, as addresses with control characters did
before ingress refused them) must never cause a repeat to the other recipients, and must still
end at `max_queue_age`. The message is put in the spool directly, as one queued by an older
version would be."""

from __future__ import annotations

import time
from typing import Any

from gateway.message import ClientInfo, Envelope, QueuedMessage, Recipient
from gateway.spool import new_queue_id
from tests.conftest import message, send
from tests.delivery.conftest import SENDER, MailWorld
from tests.polling import eventually

ROUTES = {
    ("clinic.test", "MX"): ["10 mx.clinic.test."],
    ("mx.clinic.test", "A"): ["127.0.0.11"],
    ("other.test", "MX"): ["10 mx.other.test."],
    ("mx.other.test", "A"): ["127.0.0.12"],
}
POISON = ("bad\r\nRCPT TO:<x@evil.test>@other.test", "nul\x00x@other.test", "tab\tx@other.test",
          "eight\u00e9bit@other.test", "surrogate\udcff@other.test")


async def test_a_recipient_that_breaks_delivery_repeats_nothing_to_the_others_and_expires(
        world: MailWorld) -> None:
    await world.start_dns(ROUTES)
    clinic = await world.sink("127.0.0.11")
    other = await world.sink("127.0.0.12")
    gateway = await world.gateway(max_queue_age="4s", retry_schedule=["1s"])
    queued = QueuedMessage(
        queue_id=new_queue_id(), received_at=time.time(),
        envelope=Envelope(sender=SENDER, recipients=(Recipient("pat@clinic.test"),
                                                     *(Recipient(address) for address in POISON))),
        client=ClientInfo(address="127.0.0.1", helo="client.test", listener="test"),
        size=100, message_id="<poison@example.com>")
    await gateway.spool.store(queued, message("POISON"))
    delivery = gateway.gateway.delivery
    assert delivery is not None
    delivery.notify(queued.queue_id)
    # Every recipient ends (delivered or bounced at max_queue_age): the message leaves the spool.
    await eventually(lambda: clinic.messages and not any(gateway.spool.counts().values()), timeout=30)
    assert clinic.deliveries() == [("pat@clinic.test", "POISON")]  # once, not once per retry
    assert other.messages == []
    failed = [part for dsn in world.dsns() for part in dsn.walk()
              if part.get_content_type() == "message/delivery-status"]
    assert failed, "the sender is told about the recipients that could not be delivered"
    assert gateway.spool.locate(queued.queue_id) is None


class FailingFor:
    """Fault injection around the real connector: opening a connection to one MX host raises
    an error of our own code (as a bug would), every other host is reached for real."""

    def __init__(self, connector: Any, host: str) -> None:
        self.connector, self.host = connector, host

    async def open(self, destinations: Any, *args: Any) -> Any:
        if destinations[0].host == self.host:
            raise RuntimeError("a bug in our own code")
        return await self.connector.open(destinations, *args)


async def test_an_internal_error_for_one_domain_is_its_own_temporary_failure(world: MailWorld) -> None:
    await world.start_dns(ROUTES)
    clinic = await world.sink("127.0.0.11")
    other = await world.sink("127.0.0.12")
    gateway = await world.gateway(retry_schedule=["1s"], max_queue_age="3s")
    delivery = gateway.gateway.delivery
    assert delivery is not None
    delivery.agent.connector = FailingFor(delivery.agent.connector, "mx.other.test")  # type: ignore[assignment]
    client = gateway.client()
    code, _ = await send(client, SENDER, ["pat@clinic.test", "doc@other.test"], message("JOURNAL"))
    assert code == 250
    await eventually(lambda: clinic.messages and not any(gateway.spool.counts().values()), timeout=30)
    assert len(clinic.messages) == 1 and other.messages == []  # not repeated on each retry
    failed = [dsn.as_string() for dsn in world.dsns() if "doc@other.test" in dsn.as_string()]
    assert failed and "Status: 4.4.7" in failed[0]  # expired at max_queue_age, the sender is told
