# -*- test-case-name: tests.unit.sip.test_numbers -*-
"""
Numbers as SIP, the table and the console write them: ASCII digits only.

C{str.isdigit} (without C{isascii}) is true for C{²}, C{١} and other Unicode digits, which
C{int()} then refuses or reads as something else; every number that comes
from a peer, a row or an operator goes through here instead.
"""

from __future__ import annotations

import re
from typing import Final

_HEX: Final = re.compile(r"[0-9A-Fa-f]+")


def is_digits(text: str) -> bool:
    """Whether C{text} is one or more ASCII digits and nothing else."""
    return text.isascii() and text.isdigit()


def is_hex(text: str) -> bool:
    """Whether C{text} is one or more ASCII hexadecimal digits and nothing else."""
    return _HEX.fullmatch(text) is not None


def parse_digits(text: str, maximum: int) -> int | None:
    """
    C{text} as a whole number between 0 and C{maximum}, or C{None} if it is
    not ASCII digits or is larger.  Leading zeros are allowed; the length is
    checked before converting, so a million digits cost nothing.
    """
    if not is_digits(text):
        return None
    stripped = text.lstrip("0") or "0"
    if len(stripped) > len(str(maximum)):
        return None
    value = int(stripped)
    return value if value <= maximum else None


def parse_signed(text: str, max_digits: int = 20) -> int | None:
    """
    C{text} as a whole number with an optional leading C{-}, in ASCII
    digits (at most C{max_digits} of them), or C{None}.
    """
    digits = text[1:] if text.startswith("-") else text
    if not is_digits(digits) or len(digits) > max_digits:
        return None
    return int(text)
