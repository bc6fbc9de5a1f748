"""The check-digit algorithms that confirm a PII detector's regex match.

The classifier rules name one per detector (`check:` in catalog/classifier.yaml); a match
that fails it is a number that merely looks like a card, SSN or IBAN, and is not PII.
"""

from __future__ import annotations

from collections.abc import Callable


def luhn(candidate: str) -> bool:
    digits = [ord(c) - 48 for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def us_ssn(candidate: str) -> bool:
    d = "".join(c for c in candidate if c.isdigit())
    return len(d) == 9 and d[:3] not in ("000", "666") and d[0] != "9" and d[3:5] != "00" and d[5:] != "0000"


def iban_mod97(candidate: str) -> bool:
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


# the names the rules' `check:` field accepts
CHECKS: dict[str, Callable[[str], bool]] = {"luhn": luhn, "us_ssn": us_ssn, "iban_mod97": iban_mod97}
