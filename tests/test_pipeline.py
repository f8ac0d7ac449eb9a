"""The pipeline runner: stages in order, outcomes pass through, anything else fails closed."""

from __future__ import annotations

import pytest

from gateway.errors import Hold, Reject, TempFail
from gateway.message import ClientInfo, Envelope, QueuedMessage, Recipient
from gateway.pipeline import Pipeline, PipelineItem


def item() -> PipelineItem:
    message = QueuedMessage("0" * 19, 0.0, Envelope("a@b.example", (Recipient("c@d.example"),)),
                            ClientInfo("127.0.0.1", "client", "test"), 10)
    return PipelineItem(message, b"Subject: x\r\n\r\nbody\r\n")


class Recorder:
    def __init__(self, name: str, calls: list[str], error: Exception | None = None) -> None:
        self.name, self.calls, self.error = name, calls, error

    async def process(self, item: PipelineItem) -> None:
        self.calls.append(self.name)
        if self.error is not None:
            raise self.error


async def test_stages_run_in_order() -> None:
    calls: list[str] = []
    await Pipeline((Recorder("dlp", calls), Recorder("dkim", calls), Recorder("audit", calls))).run(item())
    assert calls == ["dlp", "dkim", "audit"]


def test_stages_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError, match="stages must follow the order"):
        Pipeline((Recorder("dkim", []), Recorder("dlp", [])))


@pytest.mark.parametrize("outcome", [Reject("no"), Hold("wait"), TempFail("later")])
async def test_an_outcome_stops_the_pipeline_and_reaches_the_caller(outcome: Exception) -> None:
    calls: list[str] = []
    with pytest.raises(type(outcome)):
        await Pipeline((Recorder("dlp", calls, outcome), Recorder("dkim", calls))).run(item())
    assert calls == ["dlp"]


async def test_an_unexpected_error_fails_closed_as_a_temporary_failure() -> None:
    with pytest.raises(TempFail) as caught:
        await Pipeline((Recorder("dlp", [], KeyError("bug")),)).run(item())
    assert caught.value.reply.startswith("451 4.3.0 ")


def test_headers_are_added_in_front() -> None:
    message = item()
    message.add_headers([("X-Mailward-DLP", "phi")])
    assert message.content.startswith(b"X-Mailward-DLP: phi\r\nSubject: x\r\n")
