"""Check digits that tell a real identifier from a number of the same shape (pure functions).

Every function takes the identifier's characters without separators and returns whether the
structure and check digit are valid. None of them looks anything up: validity, not existence.
"""

from __future__ import annotations

_SSN_NEVER_ISSUED = frozenset({"078051120", "219099999"})  # famous sample numbers, void by SSA


def luhn(digits: str) -> bool:
    """ISO/IEC 7812 mod-10 check, used by payment cards and (with a prefix) NPIs."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def ssn(digits: str) -> bool:
    """US SSN structure: area not 000, 666 or 900-999; group not 00; serial not 0000."""
    if len(digits) != 9 or not digits.isdigit() or digits in _SSN_NEVER_ISSUED:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def npi(digits: str) -> bool:
    """National Provider Identifier: 10 digits starting 1 or 2, Luhn over "80840" + the number."""
    return len(digits) == 10 and digits.isdigit() and digits[0] in "12" and luhn("80840" + digits)


_DEA_REGISTRANT = frozenset("ABCDEFGHJKLMPRSTUX")


def dea(number: str) -> bool:
    """DEA registration: registrant letter, a letter (or 9), 7 digits; the last is
    (d1 + d3 + d5 + 2 * (d2 + d4 + d6)) mod 10."""
    if len(number) != 9:
        return False
    first, second, digits = number[0].upper(), number[1].upper(), number[2:]
    if first not in _DEA_REGISTRANT or not (second.isalpha() or second == "9") or not digits.isdigit():
        return False
    d = [int(c) for c in digits]
    return (d[0] + d[2] + d[4] + 2 * (d[1] + d[3] + d[5])) % 10 == d[6]


_MBI_LETTERS = frozenset("ACDEFGHJKMNPQRTUVWXY")  # A-Z without S, L, O, I, B, Z
_MBI_SHAPE = "CAPNAPNAANN"  # C: 1-9, A: letter, N: digit, P: letter or digit


def mbi(number: str) -> bool:
    """Medicare Beneficiary Identifier (CMS format): 11 characters in the shape CAPNAPNAANN."""
    if len(number) != 11:
        return False
    for char, kind in zip(number.upper(), _MBI_SHAPE, strict=True):
        if kind == "C" and not ("1" <= char <= "9"):
            return False
        if kind == "N" and not char.isdigit():
            return False
        if kind == "A" and char not in _MBI_LETTERS:
            return False
        if kind == "P" and not (char.isdigit() or char in _MBI_LETTERS):
            return False
    return True


def aba_routing(digits: str) -> bool:
    """ABA routing transit number: a Federal Reserve prefix and the 3-7-1 weighted checksum."""
    if len(digits) != 9 or not digits.isdigit():
        return False
    prefix = int(digits[:2])
    if not (prefix <= 12 or 21 <= prefix <= 32 or 61 <= prefix <= 72 or prefix == 80):
        return False
    d = [int(c) for c in digits]
    return (3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + d[2] + d[5] + d[8]) % 10 == 0


def card_network(digits: str) -> str | None:
    """The card network whose IIN range and length fit `digits`, if any (before the Luhn check)."""
    length = len(digits)
    two, three, four, six = (int(digits[:n]) for n in (2, 3, 4, 6))
    if digits[0] == "4" and length in (13, 16, 19):
        return "visa"
    if (51 <= two <= 55 or 222100 <= six <= 272099) and length == 16:
        return "mastercard"
    if two in (34, 37) and length == 15:
        return "amex"
    if (four == 6011 or two == 65 or 644 <= three <= 649 or 622126 <= six <= 622925) and 16 <= length <= 19:
        return "discover"
    if 3528 <= four <= 3589 and 16 <= length <= 19:
        return "jcb"
    if (300 <= three <= 305 or two in (36, 38, 39)) and 14 <= length <= 19:
        return "diners"
    return None


def payment_card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits.isdigit() and card_network(digits) is not None \
        and luhn(digits)
