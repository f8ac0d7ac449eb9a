"""The portal notification: a link for the recipient, branding from config, nothing of the
message itself, and HTML that cannot be injected through branding values."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from gateway.config import Config, load_config
from gateway.errors import ConfigErrors
from gateway.portal.notification import build, link_for
from tests.conftest import write_config


def config(tmp_path: Path, **branding: object) -> Config:
    return load_config(write_config(tmp_path, {"portal": {
        "base_url": "https://secure.example.com/", "branding": {
            "organization": "Example Health", "support_contact": "the patient line", **branding}}}))


def test_notification_has_the_link_and_no_message_content(tmp_path: Path) -> None:
    portal = config(tmp_path).portal
    queued, content = build(portal, token="TOKEN123", recipient="pat@example.org",
                            expires=1_800_000_000, hostname="mailward.test")
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert message["Subject"] == "Secure message from Example Health"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    link = link_for(portal, "TOKEN123")
    assert link == "https://secure.example.com/m/TOKEN123"
    assert link in text and f'href="{link}"' in html and "the patient line" in text
    assert "15 January 2027" in text
    assert queued.envelope.sender == "" and queued.envelope.recipients[0].address == "pat@example.org"


def test_branding_values_are_escaped_in_html(tmp_path: Path) -> None:
    portal = config(tmp_path, organization="<script>alert(1)</script> Clinic").portal
    _, content = build(portal, token="T", recipient="p@example.org", expires=1_800_000_000,
                       hostname="mailward.test")
    html = email.message_from_bytes(content, policy=email.policy.default).get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_bad_branding_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors, match="colour: expected a colour"):
        config(tmp_path, colour="red")
