"""DLP end to end over SMTP: a real client, the gateway with real scan worker processes, the
spool on disk. A block is a 550 at the end of DATA; hold, tag and encrypt are queued accordingly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from gateway import cli, metrics
from gateway.config import Config
from gateway.spool import QueueState
from tests.conftest import GatewayProcess, RunningGateway, send, wait_for
from tests.polling import eventually
from tests.stages.dlp import builders as b

SSN = "219-45-6789"
POLICY = """
match: first
protect: sensitive
on_error: hold
notify_to: compliance@example.net
rules:
  - name: block-ssn
    when: {detectors: {ssn: 1}, subject_tags: ["[block]"]}
    action: block
    notify: true
    reply: "Message refused: it contains Social Security numbers"
  - {name: hold-ssn, action: hold, when: {detectors: {ssn: 1}, subject_tags: ["[hold]"]}}
  - {name: tag-ssn, action: tag, when: {detectors: {ssn: 1}, subject_tags: ["[tag]"]}}
  - {name: encrypt-ssn, action: encrypt, when: {detectors: {ssn: 1}}}
"""

StartDlp = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
def start_dlp(tmp_path: Path, make_config: Callable[..., Config],
              start_gateway: Callable[[Config], Any]) -> StartDlp:
    async def start(policy: str = POLICY, **dlp: Any) -> RunningGateway:
        policies = tmp_path / "policies"
        policies.mkdir(exist_ok=True)
        (policies / "test.yaml").write_text(policy)
        running: RunningGateway = await start_gateway(
            make_config(policies_dir=str(policies), dlp={"workers": 1, **dlp}))
        return running
    return start


async def submit(gateway: RunningGateway, raw: bytes, to: str = "patient@example.org") -> tuple[int, str]:
    return await send(gateway.client(), "doctor@clinic.example", [to], raw)


def only(gateway: RunningGateway, state: QueueState) -> tuple[str, bytes]:
    [queue_id] = gateway.queued(state)
    return queue_id, gateway.spool.content(queue_id, state)


async def test_block_is_refused_with_550_at_end_of_data(start_dlp: StartDlp) -> None:
    gateway = await start_dlp()
    code, text = await submit(gateway, b.message(f"SSN {SSN}", subject="[block] records"))
    assert (code, text) == (550, "5.7.1 Message refused: it contains Social Security numbers")
    assert gateway.queued(QueueState.HOLD) == []
    _, notice = only(gateway, QueueState.INCOMING)  # only the compliance notification
    assert b"To: compliance@example.net" in notice


async def test_compliance_notification_carries_no_phi(start_dlp: StartDlp) -> None:
    gateway = await start_dlp()
    await submit(gateway, b.message(f"Dear Jane, SSN {SSN}", subject="[block] Jane Roe lab results",
                                    attachments=[("jane-roe-labs.txt", b"x", "text/plain")]))
    queue_id, notice = only(gateway, QueueState.INCOMING)
    meta = gateway.spool.load(queue_id, QueueState.INCOMING)
    assert meta.envelope.sender == "" and meta.envelope.recipients[0].address == "compliance@example.net"
    for phi in (SSN.encode(), b"219456789", b"Jane", b"lab results", b"jane-roe-labs"):
        assert phi not in notice
    assert b"block-ssn" in notice and b"ssn=1" in notice and b"doctor@clinic.example" in notice


async def test_hold_keeps_the_message_for_review_until_released(start_dlp: StartDlp) -> None:
    gateway = await start_dlp()
    code, text = await submit(gateway, b.message(f"SSN {SSN}", subject="[hold] intake"))
    assert code == 250
    queue_id, _ = only(gateway, QueueState.HOLD)
    assert queue_id in text and gateway.queued() == []
    assert gateway.spool.load(queue_id, QueueState.HOLD).policy.action == "hold"
    config_file = gateway.gateway.config.source
    assert cli.main(["-c", str(config_file), "queue", "release", queue_id]) == 0
    assert gateway.queued() == [queue_id]


async def test_tag_adds_a_header_and_queues(start_dlp: StartDlp) -> None:
    gateway = await start_dlp()
    code, _ = await submit(gateway, b.message(f"SSN {SSN}", subject="[tag] intake"))
    assert code == 250
    _, content = only(gateway, QueueState.INCOMING)
    head = content.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert head[0].startswith(b"Received: ") and b"X-Mailward-DLP: tag-ssn" in head


async def test_encrypt_marks_recipients_for_protected_delivery(start_dlp: StartDlp) -> None:
    gateway = await start_dlp()
    assert (await submit(gateway, b.message(f"SSN {SSN}")))[0] == 250
    queue_id, _ = only(gateway, QueueState.INCOMING)
    policy = gateway.spool.load(queue_id, QueueState.INCOMING).policy
    assert (policy.action, policy.rules, policy.protect) == ("encrypt", ("encrypt-ssn",), (0,))


async def test_message_without_phi_is_queued_untouched(start_dlp: StartDlp) -> None:
    gateway = await start_dlp()
    raw = b.message("Lunch on Friday?")
    assert (await submit(gateway, raw))[0] == 250
    queue_id, content = only(gateway, QueueState.INCOMING)
    assert content.endswith(raw) and gateway.spool.load(queue_id).policy.action == "allow"


async def test_scan_past_the_time_budget_is_decided_by_on_error(start_dlp: StartDlp) -> None:
    gateway = await start_dlp(time_budget="1ms")
    raw = b.message("Lunch? " * 200_000)
    assert (await submit(gateway, raw))[0] == 250
    queue_id, _ = only(gateway, QueueState.HOLD)
    assert gateway.spool.load(queue_id, QueueState.HOLD).policy.action == "hold"


async def test_20mb_message_is_scanned_to_the_end_within_the_budget(start_dlp: StartDlp) -> None:
    gateway = await start_dlp()
    filler = "Follow-up visit notes, vitals normal, continue current plan.\n" * 330_000  # ~20 MB
    raw = b.message(filler + f"SSN {SSN}", subject="[block] big")
    assert len(raw) > 20_000_000
    code, text = await submit(gateway, raw)
    assert (code, text) == (550, "5.7.1 Message refused: it contains Social Security numbers")


async def test_zip_bomb_is_scanned_within_the_budget(start_dlp: StartDlp) -> None:
    gateway = await start_dlp()
    raw = b.message(f"SSN {SSN}", subject="[block] bomb",
                    attachments=[("bomb.zip", b.zip_bomb(), "application/zip")])
    code, text = await submit(gateway, raw)
    assert (code, text) == (550, "5.7.1 Message refused: it contains Social Security numbers")


async def test_matches_are_counted_by_rule_name(start_dlp: StartDlp) -> None:
    gateway = await start_dlp()
    before = metrics.REGISTRY.get_sample_value("mailward_dlp_matches_total", {"rule": "encrypt-ssn"}) or 0
    assert (await submit(gateway, b.message(f"SSN {SSN}")))[0] == 250
    after = metrics.REGISTRY.get_sample_value("mailward_dlp_matches_total", {"rule": "encrypt-ssn"})
    assert after == before + 1


async def test_reload_applies_a_changed_policy_to_the_next_message(start_dlp: StartDlp,
                                                                   tmp_path: Path) -> None:
    gateway = await start_dlp()
    assert (await submit(gateway, b.message(f"SSN {SSN}")))[0] == 250
    (tmp_path / "policies" / "test.yaml").write_text(
        "match: first\nprotect: sensitive\n"
        "rules: [{name: no-ssn, action: block, when: {detectors: {ssn: 1}}}]\n")
    assert gateway.gateway.reload()
    code, _ = await submit(gateway, b.message(f"SSN {SSN}"))
    assert code == 550


async def test_reload_with_a_broken_policy_keeps_the_running_one(start_dlp: StartDlp,
                                                                 tmp_path: Path) -> None:
    gateway = await start_dlp()
    (tmp_path / "policies" / "test.yaml").write_text("match: first\nprotect: sensitive\n"
                                                     "rules: [{name: x, action: nuke}]\n")
    assert not gateway.gateway.reload()
    code, text = await submit(gateway, b.message(f"SSN {SSN}", subject="[block] still"))
    assert (code, text) == (550, "5.7.1 Message refused: it contains Social Security numbers")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def test_other_sessions_are_served_while_a_large_message_is_scanned(start_dlp: StartDlp) -> None:
    gateway = await start_dlp()
    await gateway.gateway.scan_pool.start()  # workers start on demand; this one now, to watch it
    worker = gateway.gateway.scan_pool._workers[0].process
    assert worker.pid is not None
    idle = cpu_ticks(worker.pid)
    rows = "".join(f"row {i}: 12 34 56 78 90 dose 5 mg qid 10 11 12\n" for i in range(150_000))
    big = asyncio.ensure_future(submit(gateway, b.message(rows)))
    await eventually(lambda: cpu_ticks(worker.pid) > idle + 20)  # the worker is busy scanning it
    assert (await submit(gateway, b.message("Lunch on Friday?")))[0] == 250
    assert not big.done()
    assert (await big)[0] == 250


def children(pid: int) -> list[int]:
    """Child processes of every thread of `pid` (workers are started from pool threads)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


async def test_mailward_run_scans_in_workers_that_die_with_it(
        gateway_process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICY)
    process = gateway_process(policies_dir=str(policies), dlp={"workers": 1})
    process.start()
    assert process.proc is not None
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=process.port, start_tls=False, timeout=30)
    big = b.message("Notes follow.\n" * 20_000 + f"SSN {SSN}", subject="[block] big")  # > inline_max
    code, _ = await send(client, "doctor@clinic.example", ["patient@example.org"], big)
    assert code == 550
    workers = children(process.proc.pid)
    assert workers  # the scan worker
    process.stop()  # SIGKILL: no chance to clean up
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() and
                             "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                             for pid in workers))


async def test_an_ssn_in_an_x_header_is_blocked_over_smtp(start_dlp: StartDlp) -> None:
    gateway = await start_dlp()
    raw = (b"From: doctor@clinic.example\r\nTo: patient@example.org\r\nSubject: [block] note\r\n"
           b"X-Chart: SSN " + SSN.encode() + b"\r\n\r\nSee the header.\r\n")
    code, _ = await submit(gateway, raw)
    assert code == 550
    assert gateway.queued(QueueState.HOLD) == []
