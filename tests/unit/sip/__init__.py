"""Unit tests of uacregistrant.sip."""
