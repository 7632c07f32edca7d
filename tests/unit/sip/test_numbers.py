"""Tests for L{uacregistrant.sip.numbers}: ASCII digits only."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.sip.numbers import is_digits, is_hex, parse_digits, parse_signed


class NumbersTests(SynchronousTestCase):
    def test_unicode_digits_are_not_digits(self) -> None:
        """Superscripts, Arabic-Indic, full-width and mathematical digits are refused."""
        for text in ("\u00b2", "\u0661", "\uff11", "\U0001d7ce", "1\u00b3", "", " 1", "1_000", "+1", "-1"):
            self.assertFalse(is_digits(text), text)
            self.assertIsNone(parse_digits(text, 10**9), text)
        self.assertTrue(is_digits("0123"))

    def test_bounds_checked_before_converting(self) -> None:
        """A million digits cost nothing; leading zeros are allowed."""
        self.assertIsNone(parse_digits("9" * 1_000_000, 65535))
        self.assertEqual(parse_digits("0" * 1000 + "5060", 65535), 5060)
        self.assertEqual(parse_digits("65535", 65535), 65535)
        self.assertIsNone(parse_digits("65536", 65535))

    def test_hex(self) -> None:
        """Hex digits are ASCII too: no sign, no underscore, no Unicode."""
        self.assertTrue(is_hex("0aF9"))
        for text in ("", "+a", "a_b", "\u0661", "0x1", " a"):
            self.assertFalse(is_hex(text), text)

    def test_signed(self) -> None:
        """An optional minus, ASCII digits, a bounded length; nothing else."""
        self.assertEqual([parse_signed(t) for t in ("0", "-7", "0042")], [0, -7, 42])
        for text in ("", "-", "+1", "--1", "1 ", "\u00b2", "-\u0661", "1e3", "1_0"):
            self.assertIsNone(parse_signed(text), text)
        self.assertIsNone(parse_signed("1" * 13, max_digits=12))

    @given(st.text(max_size=12))
    def test_agrees_with_int_on_ascii(self, text: str) -> None:
        """Whatever the text, parse_digits is int() for ASCII digits and None otherwise."""
        value = parse_digits(text, 2**64)
        if text.isascii() and text.isdigit():
            self.assertEqual(value, int(text))
        else:
            self.assertIsNone(value)
