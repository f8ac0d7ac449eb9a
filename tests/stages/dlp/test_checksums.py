"""Identifier check digits against published sample numbers (synthetic, never real people)."""

from __future__ import annotations

import pytest

from gateway.stages.dlp import checksums


@pytest.mark.parametrize(("number", "network"), [
    ("4111111111111111", "visa"), ("5555555555554444", "mastercard"), ("2223003122003222", "mastercard"),
    ("378282246310005", "amex"), ("6011111111111117", "discover"), ("3530111333300000", "jcb"),
    ("30569309025904", "diners")])
def test_test_card_numbers_are_valid_cards_of_their_network(number: str, network: str) -> None:
    assert checksums.payment_card(number)
    assert checksums.card_network(number) == network


@pytest.mark.parametrize("number", ["4111111111111112", "1234567812345670", "9111111111111111",
                                    "41111111111111"])
def test_wrong_check_digit_or_unknown_range_is_not_a_card(number: str) -> None:
    assert not checksums.payment_card(number)


def test_ssn_structure_rules() -> None:
    assert checksums.ssn("123456789") and checksums.ssn("899991234")
    for invalid in ("000123456", "666123456", "912345678", "123004567", "123450000", "078051120"):
        assert not checksums.ssn(invalid), invalid


def test_npi_uses_luhn_with_the_80840_prefix() -> None:
    assert checksums.npi("1234567893")  # the CMS example
    assert not checksums.npi("1234567890") and not checksums.npi("3234567893")


def test_dea_checksum() -> None:
    assert checksums.dea("AB1234563") and checksums.dea("f91234563")
    assert not checksums.dea("AB1234567") and not checksums.dea("QB1234563")


def test_medicare_beneficiary_identifier_shape() -> None:
    assert checksums.mbi("1EG4TE5MK73")  # the CMS example
    assert not checksums.mbi("0EG4TE5MK73") and not checksums.mbi("1SG4TE5MK73")
    assert not checksums.mbi("1EG4TE5MK7")


def test_aba_routing_checksum_and_prefix() -> None:
    assert checksums.aba_routing("021000021") and checksums.aba_routing("011000015")
    assert not checksums.aba_routing("021000022") and not checksums.aba_routing("991000021")


def test_luhn() -> None:
    assert checksums.luhn("79927398713") and not checksums.luhn("79927398710")
